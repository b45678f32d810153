"""The GPU memory planner, against byte counts worked out by hand for Llama-2-7B and -70B shapes."""

from llmsparse.gpu.plan import PRESETS, Shape, main, plan


def test_llama_2_7b_plan_by_hand():
    p = plan(PRESETS["llama-2-7b"], 128, 2048, 80 * 10**9)
    # q,k,v,o 4*4096^2 + gate,up,down 3*4096*11008 + 2 norms of 4096 = 202,383,360 weights
    assert p.layer_fp32 == 202_383_360 * 4 == 809_533_440
    assert p.activations == 128 * 2048 * 4096 * 2 == 2_147_483_648
    assert p.hessians == (3 * 4096**2 + 11008**2) * 4 == 686_030_848
    assert p.workspace == 4 * 11008**2 * 4
    assert p.model_bf16 == (32 * 202_383_360 + 2 * 32000 * 4096 + 4096) * 2  # 6.74B weights
    # 2048 tokens x ((3*4096 + 2*4096 + 3*11008 + 4096) bf16 + 11008 fp32) = 326,107,136 bytes
    assert p.forward_per_sequence == 326_107_136
    assert p.activations_on_device and p.batch == 128  # (80e9 - 7,729,348,608) / 326,107,136 = 221 > 128


def test_llama_2_70b_fits_one_80gb_gpu_layer_by_layer():
    shape = PRESETS["llama-2-70b"]
    assert shape.kv_dim == 1024 and shape.params == 68_976_648_192  # Llama-2-70B's published 69.0B
    p = plan(shape, 128, 2048, 80 * 10**9)
    assert p.layer_fp32 == (2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192) * 4 == 3_422_617_600
    assert p.hessians == (3 * 8192**2 + 28672**2) * 4 == 4_093_640_704
    assert p.model_bf16 > 80 * 10**9  # never whole on one GPU
    # fixed: 3,422,617,600 + 4,093,640,704 + 13,153,337,344 + 2 * 4,294,967,296 = 29,259,530,240
    assert p.fixed_with_activations == 29_259_530_240
    assert p.forward_per_sequence == 2048 * ((3 * 8192 + 2 * 1024 + 3 * 28672 + 8192) * 2 + 28672 * 4)
    assert p.activations_on_device and p.batch == 69  # 50,740,469,760 // 729,808,896


def test_small_gpu_moves_activations_to_the_host():
    p = plan(Shape(4096, 11008, 32, 32, 32000), 1024, 4096, 24 * 10**9)
    assert not p.activations_on_device  # 2 x 32 GiB of activations
    assert 0 < p.batch < 1024


def test_command_prints_both_plans(capsys):
    main(["llama-2-7b", "llama-2-70b"])
    out = capsys.readouterr().out
    assert "llama-2-70b (128 x 2048)" in out and "does not fit whole" in out and "forward batch 69 sequences" in out

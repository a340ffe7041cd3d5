"""Scale-out: rank/world from torchrun's environment, sharding, seeds, and a 2-process gloo run
whose merged rows equal the single-process rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import EVAL_TEST_ROWS, eval_command, read_rows
from fvit_core.runtime import distributed


def test_context_from_torchrun_environment():
    assert distributed.context_from_env({}) == distributed.DistContext(0, 1, 0)
    ctx = distributed.context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.is_distributed) == (3, 4, 1, False, True)
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.context_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="whole number"):
        distributed.context_from_env({"WORLD_SIZE": "two"})


def test_shards_partition_the_items():
    items = list(range(11))
    shards = [distributed.shard(items, distributed.DistContext(r, 3, r)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shards, [])) == items


def test_device_per_local_rank():
    ctx = distributed.DistContext(rank=5, world_size=8, local_rank=1)
    assert distributed.device_for(ctx, "cuda") == "cuda:1"
    assert distributed.device_for(ctx, "cpu") == "cpu"
    assert distributed.device_for(distributed.DistContext(), "cuda:2") == "cuda:2"
    with pytest.raises(ValueError, match="every rank on one GPU"):
        distributed.device_for(ctx, "cuda:0")


def test_seeds_depend_only_on_their_parts():
    from fvit_core.protocol.seeds import ImageSeeds, derive_seed

    seed = derive_seed(0, "eval", 7, "dds", 0.25, "raw")
    assert seed == derive_seed(0, "eval", 7, "dds", 0.25, "raw")
    assert seed == 0x5EBA69929222E71A  # fixed forever: changing it changes every published number
    assert len({derive_seed(0, "eval", i) for i in range(100)}) == 100
    assert derive_seed(1, "eval", 7) != derive_seed(0, "eval", 7)
    assert derive_seed(0, "eval", 8 / 255) == derive_seed(0, "eval", 0.03137254901960784)
    seeds = ImageSeeds(0, "abc")
    assert seeds("clean", "dds", 0.25, "raw") == derive_seed(0, "image", "abc", "clean", "dds", 0.25, "raw")
    assert seeds("clean", "dds", 0.25, "raw") != ImageSeeds(0, "abd")("clean", "dds", 0.25, "raw")
    with pytest.raises(ValueError, match="unknown seed stage"):
        seeds("cleen")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process(eval_reference, image_folder, tiny_pair_dir, tmp_path):
    _, reference = eval_reference
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "fvit_core.cli",
               *eval_command(image_folder, tiny_pair_dir, out), "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["new_rows_by_file"] == {"rows.rank0.jsonl": EVAL_TEST_ROWS // 2, "rows.rank1.jsonl": EVAL_TEST_ROWS // 2}
    assert not list(out.glob("rows.rank*.jsonl"))  # merged into rows.jsonl by rank 0
    assert read_rows(out) == reference

"""``fastops train --launcher slurm``: Slurm's hostlist syntax and the srun task's torch.distributed
variables (the training itself runs in tests/test_train.py)."""
import os
import stat

import pytest

from fastops.slurm import SlurmError, dist_env, expand_hostlist, first_host, job_port


@pytest.mark.parametrize("hostlist, hosts", [
    ("node[01-04]", ["node01", "node02", "node03", "node04"]),
    ("a1,b[2-3,5]", ["a1", "b2", "b3", "b5"]),
    ("gpu-[1-2]-x", ["gpu-1-x", "gpu-2-x"]),
    ("n[9-11]", ["n9", "n10", "n11"]),  # no zero padding: widths grow
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
    ("a b,c", ["a", "b", "c"]),
    ("localhost", ["localhost"]),
])
def test_hostlist_expands_like_scontrol_show_hostnames(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["n[1-", "n]1[", "n[[1]]", "n[3-1]", "n[a]", "n[1-]", ""])
def test_malformed_hostlist_is_an_error(hostlist):
    with pytest.raises(SlurmError, match="node list"):
        expand_hostlist(hostlist)


def test_first_host_asks_scontrol_where_slurm_is_installed(tmp_path, monkeypatch):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" > "${0%/*}/args"\necho from-scontrol\necho other\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert first_host("node[01-04]") == "from-scontrol"
    assert (tmp_path / "args").read_text() == "show hostnames node[01-04]\n"
    monkeypatch.setenv("PATH", os.devnull)  # no scontrol: expanded in Python
    assert first_host("node[01-04]") == "node01"


TASK = dict(SLURM_PROCID="11", SLURM_LOCALID="3", SLURM_NTASKS="16", SLURM_NODELIST="gpu[07-08]",
            SLURM_JOB_ID="123456")


def test_srun_task_maps_onto_torch_env_variables(monkeypatch):
    monkeypatch.setenv("PATH", os.devnull)
    assert dist_env(TASK) == dict(RANK="11", LOCAL_RANK="3", WORLD_SIZE="16", MASTER_ADDR="gpu07",
                                  MASTER_PORT=str(job_port("123456")))
    assert job_port("123456") == 23456  # the same for every task of the job
    overridden = dist_env(TASK, master_addr="10.0.0.1", master_port=29500)
    assert (overridden["MASTER_ADDR"], overridden["MASTER_PORT"]) == ("10.0.0.1", "29500")


def test_outside_srun_names_the_missing_variables():
    with pytest.raises(SlurmError, match="not set here: SLURM_LOCALID, SLURM_JOB_ID"):
        dist_env({key: value for key, value in TASK.items()
                  if key not in ("SLURM_LOCALID", "SLURM_JOB_ID")})

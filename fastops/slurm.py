"""``fastops train --launcher slurm``: torch.distributed's ``env://`` variables for an srun task.

srun starts one task per GPU; Slurm numbers them (``SLURM_PROCID``, ``SLURM_LOCALID``,
``SLURM_NTASKS``) and the first host of the step's node list serves the process group's store.
"""
import re
import shutil
import subprocess

# Tasks of one job get the same port, jobs sharing a node different ones; below Linux's
# ephemeral range (32768-60999), where the kernel picks ports for outgoing connections.
JOB_PORT_BASE = 20000
JOB_PORT_SPAN = 10000
TASK_VARIABLES = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NODELIST", "SLURM_JOB_ID")


class SlurmError(Exception):
    """Not run as an srun task, or a node list that is not a Slurm hostlist."""


def split_top_level(hostlist):
    """The comma- or whitespace-separated items of ``hostlist``, brackets kept whole."""
    items, depth, current = [], 0, ""
    for char in hostlist:
        depth += (char == "[") - (char == "]")
        if depth < 0 or depth > 1:
            raise SlurmError(f"unbalanced brackets in node list {hostlist!r}")
        if depth == 0 and (char == "," or char.isspace()):
            items.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise SlurmError(f"unbalanced brackets in node list {hostlist!r}")
    return [item for item in items + [current] if item]


def expand_ranges(ranges, hostlist):
    """``01-03,7`` -> ``['01', '02', '03', '7']``: a range keeps its lower bound's width."""
    numbers = []
    for part in ranges.split(","):
        low, dash, high = part.partition("-")
        high = high if dash else low
        if not (low.isdigit() and high.isdigit()) or int(high) < int(low):
            raise SlurmError(f"bad range {part!r} in node list {hostlist!r}")
        numbers += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return numbers


def expand_host(item, hostlist):
    """One item, e.g. ``rack[1-2]-n[01-02]``: every bracket set expands, leftmost outermost."""
    match = re.match(r"([^\[\]]*)\[([^\[\]]*)\](.*)$", item)
    if not match:
        return [item]
    prefix, ranges, rest = match.groups()
    return [prefix + number + tail for number in expand_ranges(ranges, hostlist)
            for tail in expand_host(rest, hostlist)]


def expand_hostlist(hostlist):
    """Slurm's hostlist syntax in Python: ``node[01-03],gpu-[1-2]-x`` ->
    ``['node01', 'node02', 'node03', 'gpu-1-x', 'gpu-2-x']``."""
    hosts = [host for item in split_top_level(hostlist) for host in expand_host(item, hostlist)]
    if not hosts:
        raise SlurmError(f"empty node list {hostlist!r}")
    return hosts


def first_host(nodelist):
    """The first host of a Slurm node list: ``scontrol show hostnames`` where Slurm is
    installed, else expanded in Python."""
    if shutil.which("scontrol"):
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                               capture_output=True, text=True).stdout.split()
        if hosts:
            return hosts[0]
    return expand_hostlist(nodelist)[0]


def job_port(job_id):
    """The store's port when ``--master-port`` is not given, derived from the job id."""
    return JOB_PORT_BASE + int(job_id) % JOB_PORT_SPAN


def dist_env(environ, master_addr=None, master_port=None):
    """``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` for the srun
    task whose environment is ``environ``; ``master_addr`` / ``master_port`` override the first
    node of the step and the job-derived port."""
    missing = [name for name in TASK_VARIABLES if name not in environ]
    if missing:
        raise SlurmError("--launcher slurm runs as an srun task (one per GPU); not set here: "
                         + ", ".join(missing))
    return {
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ["SLURM_LOCALID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "MASTER_ADDR": master_addr or first_host(environ["SLURM_NODELIST"]),
        "MASTER_PORT": str(master_port or job_port(environ["SLURM_JOB_ID"])),
    }

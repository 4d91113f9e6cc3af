"""A real single-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd as root.

    with SlurmCluster() as cluster:         # skips the test where it cannot run (not root, no apt-get)
        cluster.sbatch("--wait", "-p", "gpu", "--gpus=1", "--wrap", "echo $CUDA_VISIBLE_DEVICES")
        cluster.jobs()                     # every job slurmctld still knows, finished ones included

What it needs and does:
- root (the daemons run as root: SlurmUser=SlurmdUser=root). Where slurmctld is missing it installs the Debian
  packages slurm-wlm and munge with apt-get (a failed installation is an error, not a skip: CI must run the tests).
- Everything it writes lives in a fresh /tmp/sg-slurm-XXXX folder, except /etc/slurm/slurm.conf and
  /etc/slurm/gres.conf: the executor plugin's job step drops every SLURM_* variable, SLURM_CONF included, so the
  configuration has to be at its default path. Files found there are moved aside and put back by stop().
- munged runs on a private socket with a private key (AuthInfo=socket=... in slurm.conf), so a munged of the
  machine, and /etc/munge, are left alone.
- The node is this host (hostname -s, NodeAddr 127.0.0.1) with the CPUs this process may use, a RealMemory a bit below
  MemTotal and two fake GPUs (device files in the state folder, see _make_fake_gpus); partitions `cpu` (default)
  and `gpu`.
- No accounting daemon: sacct does not work, so `squeue` is the status command; MinJobAge=300 keeps finished jobs
  in squeue/scontrol for five minutes.
- EnforcePartLimits=ALL: a job asking for more CPUs or memory than the node has is refused by sbatch at once
  (without it, `sbatch -c 3` on two CPUs is accepted and pends forever with reason PartitionConfig).
- stop() cancels the jobs still known, then ends exactly the daemons it started, by their PIDs (SIGTERM, SIGKILL
  after a grace time), and restores /etc/slurm.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ETC = Path("/etc/slurm")
MARKER = "# written by tests/slurm_cluster.py"
BACKUP_SUFFIX = ".sg-test-backup"
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """This process's environment without SLURM_* variables (a test run inside a SLURM job must not leak its
    allocation into the test cluster's commands)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({error})"


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One line of `scontrol show -o ...`: space-separated Key=Value pairs (values may hold '=' and ',')."""
    pairs = re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*(?:\s+(?![A-Za-z][\w:/]*=)\S+)*)", line)
    return {key: value.strip() for key, value in (m.groups() for m in pairs)}


class SlurmCluster:
    """Single-node SLURM: start() brings it up (or skips the test), stop() tears down everything start() made."""

    def __init__(self, gpus: int = 2, min_job_age: int = 300, ready_timeout: float = 60):
        self.gpus, self.min_job_age, self.ready_timeout = gpus, min_job_age, ready_timeout
        self.node = socket.gethostname().split(".")[0]
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.memory_mb = self._real_memory_mb()
        self.state: Path | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self._etc_files: list[tuple[Path, Path | None]] = []  # (written file, its backup or None)
        self._created_etc = False

    # --- whether and how it can run ---------------------------------------------------------------------------

    @staticmethod
    def skip_reason() -> str | None:
        """Why this machine cannot host the test cluster, or None."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return "a real SLURM test cluster needs root (it runs munged, slurmctld and slurmd and writes /etc/slurm)"
        if not (_which("slurmctld") and _which("slurmd") and _which("munged")) and not shutil.which("apt-get"):
            return "SLURM is not installed and there is no apt-get to install slurm-wlm and munge"
        return None

    @staticmethod
    def ensure_installed() -> None:
        """Install slurm-wlm and munge with apt-get where slurmctld, slurmd or munged is missing. Services the
        packages would start are blocked for the duration (policy-rc.d), so no daemon runs that this class did not
        start; a failure raises."""
        if _which("slurmctld") and _which("slurmd") and _which("munged") and _which("sbatch"):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        policy = Path("/usr/sbin/policy-rc.d")
        block = not policy.exists()
        if block:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            for command in (
                ["apt-get", "update"],
                ["apt-get", "install", "-y", "slurm-wlm", "munge"],
            ):
                result = subprocess.run(command, env=env, capture_output=True, text=True)
                if result.returncode:
                    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        finally:
            if block:
                policy.unlink(missing_ok=True)
        missing = [n for n in ("slurmctld", "slurmd", "munged", "sbatch") if not _which(n)]
        if missing:
            raise RuntimeError(f"apt-get installed slurm-wlm and munge, but {missing} are still missing")

    @staticmethod
    def _real_memory_mb() -> int:
        total_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
        return max(500, int(total_kb / 1024 * 0.9))

    # --- configuration ------------------------------------------------------------------------------------------

    def slurm_conf(self) -> str:
        s = self.state
        return f"""{MARKER} for the test cluster in {s}; stop() removes it.
ClusterName=sgtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={s}/munge/munge.socket
StateSaveLocation={s}/ctld
SlurmdSpoolDir={s}/slurmd
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
EnforcePartLimits=ALL
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge={self.min_job_age}
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.node} MaxTime=INFINITE State=UP
"""

    def gres_conf(self) -> str:
        # One line per fake device, an explicit File each: no autodetection (no NVML here).
        lines = [f"NodeName={self.node} Name=gpu File={self.state}/gpus/nvidia{i}" for i in range(self.gpus)]
        return "\n".join([MARKER, *lines, ""])

    def _make_fake_gpus(self) -> None:
        """Device files for the fake GPUs: character devices with NVIDIA's major number 195 (slurmd takes only
        device files as GPUs it sets CUDA_VISIBLE_DEVICES for; nothing opens them), plain files where mknod is not
        permitted (the jobs then still get their GPU count, but no CUDA_VISIBLE_DEVICES)."""
        for i in range(self.gpus):
            path = self.state / "gpus" / f"nvidia{i}"
            try:
                os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(195, i))
            except OSError:
                path.touch()

    def _write_etc(self, name: str, text: str) -> None:
        path = ETC / name
        backup = None
        if path.exists() and MARKER not in path.read_text(errors="replace"):
            backup = path.with_name(path.name + BACKUP_SUFFIX)
            if backup.exists():
                raise RuntimeError(f"{path} and {backup} both exist: restore one of them by hand")
            path.rename(backup)
        elif path.with_name(path.name + BACKUP_SUFFIX).exists():  # left by a killed run: still to be restored
            backup = path.with_name(path.name + BACKUP_SUFFIX)
        path.write_text(text)
        self._etc_files.append((path, backup))

    def _restore_etc(self) -> None:
        while self._etc_files:
            path, backup = self._etc_files.pop()
            path.unlink(missing_ok=True)
            if backup is not None and backup.exists():
                backup.rename(path)
        if self._created_etc:
            try:
                ETC.rmdir()
            except OSError:
                pass
            self._created_etc = False

    # --- daemons ------------------------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.state / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_clean_env(),
            start_new_session=True,
        )
        log.close()

    def _start_munge(self) -> None:
        folder = self.state / "munge"
        folder.mkdir(mode=0o755)  # munged wants its socket folder searchable by all, writable by root only
        key = folder / "munge.key"
        mungekey = _which("mungekey")
        if mungekey:
            subprocess.run([mungekey, "--create", f"--keyfile={key}"], check=True, capture_output=True)
        else:
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = folder / "munge.socket"
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--pid-file={folder}/munged.pid",
                f"--seed-file={folder}/munged.seed",
                f"--log-file={folder}/munged.log",
            ],
        )
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            if self.processes["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"munged did not start:\n{_tail(folder / 'munged.log')}\n{_tail(self.state / 'log/munged.out')}"
                )
            time.sleep(0.1)

    def start(self) -> SlurmCluster:
        reason = self.skip_reason()
        if reason:
            pytest.skip(reason)
        self.ensure_installed()
        self.state = Path(tempfile.mkdtemp(prefix="sg-slurm-", dir="/tmp"))
        try:
            for sub in ("ctld", "slurmd", "log", "gpus"):
                (self.state / sub).mkdir()
            self._make_fake_gpus()
            self.ctld_port, self.slurmd_port = _free_port(), _free_port()
            if not ETC.exists():
                ETC.mkdir(parents=True)
                self._created_etc = True
            self._write_etc("slurm.conf", self.slurm_conf())
            self._write_etc("gres.conf", self.gres_conf())
            self._start_munge()
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node])
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        state = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.logs()}")
            result = self.run("sinfo", "-h", "-n", self.node, "-o", "%t", check=False)
            state = result.stdout.strip()
            if result.returncode == 0 and state.split("\n")[0] == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"the test node did not become idle in {self.ready_timeout} s (sinfo: {state!r}):\n{self.logs()}"
        )

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the daemons this object started: munged, slurmctld, slurmd (the only processes stop() ends)."""
        return {name: process.pid for name, process in self.processes.items()}

    def logs(self, lines: int = 40) -> str:
        """The tails of the daemons' logs (while the cluster is up)."""
        if self.state is None:
            return "(stopped: no logs)"
        names = ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munged.out")
        return "\n".join(f"--- {n}:\n{_tail(self.state / 'log' / n, lines)}" for n in names)

    def stop(self) -> None:
        """Cancel the jobs, end the daemons this object started (by PID) and restore /etc/slurm. Idempotent."""
        try:
            if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
                self.run("scancel", "--full", "--user=root", check=False, timeout=20)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    listed = self.run("squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING", "-o", "%i", check=False)
                    if listed.returncode or not listed.stdout.strip():
                        break
                    time.sleep(0.5)
        except Exception:
            pass
        for name in ("slurmd", "slurmctld", "munged"):  # the order matters: slurmd reports to slurmctld
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._restore_etc()
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)
            self.state = None

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- using it -----------------------------------------------------------------------------------------------

    def run(self, *command: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """A SLURM client command (sbatch, squeue, scontrol ...) against this cluster."""
        result = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            env={**_clean_env(), **kwargs.pop("env", {})},
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def sbatch(self, *args: str, **kwargs) -> str:
        """Submit a job (--parsable added); returns its job id."""
        return self.run("sbatch", "--parsable", *args, **kwargs).stdout.strip().split(";")[0]

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (finished ones for MinJobAge seconds), as `scontrol show job` records:
        JobId, JobName, Partition, JobState, Comment, TresPerJob, TRES, NumCPUs, ... plus `Id`, which is
        ArrayJobId_ArrayTaskId for an array task and JobId otherwise."""
        out = self.run("scontrol", "show", "job", "-o").stdout
        records = []
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue
            record = parse_scontrol_record(line)
            task = record.get("ArrayTaskId")
            record["Id"] = f"{record['ArrayJobId']}_{task}" if task else record["JobId"]
            records.append(record)
        return records

"""Helpers shared by the benchmarks in bench/: process and machine CPU from
/proc, Prometheus text scraping, bounded waits, the machine's description and
the generated sections of docs/benchmarks.md.

Benchmarks are scripts, not tests: they start what they measure as separate
processes (vilokanam.services.process.ManagedProcess, which also dies with its
parent) so a process's CPU can be read alone from /proc/<pid>/stat."""

from __future__ import annotations

import os
import platform
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on (a child died, a wait ran out of time)."""


# -- CPU -----------------------------------------------------------------------------


def stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and
    parentheses): fields[0] is field 3 of proc(5), the state."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def all_stat_fields() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat_fields) of every process still there when it is read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), stat_fields(entry)
            except OSError:  # exited meanwhile
                continue


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, all its threads included (aiortc encodes
    and decodes in threads, so those count too)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14, 15 of proc(5)


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds of a process, its live children and its reaped ones
    (Postgres: the postmaster and its backends; a backend calls setsid(), so
    the process group would miss it)."""
    return role_cpu_seconds({"": pid})[""] if pid is not None else 0.0


def role_cpu_seconds(roles: Mapping[str, int | None]) -> dict[str, float]:
    """`tree_cpu_seconds` of several processes in one pass over /proc. The
    calling process counts alone (its children are other roles)."""
    me = os.getpid()
    by_pid = {pid: role for role, pid in roles.items() if pid is not None}
    seconds = dict.fromkeys(roles, 0.0)
    for found, fields in all_stat_fields():
        parent = int(fields[1])
        if found in by_pid:  # utime, stime, cutime, cstime: fields 14-17 of proc(5)
            counted = fields[11:13] if found == me else fields[11:15]
            seconds[by_pid[found]] += sum(int(v) for v in counted) / CLOCK_TICKS
        elif parent in by_pid and parent != me:
            seconds[by_pid[parent]] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


@dataclass(frozen=True)
class RoleCpu:
    """CPU seconds of named processes (each with its children) and of the
    machine at one instant: two of them say which side of a benchmark
    saturated the cores."""

    at: float
    seconds: dict[str, float]
    machine: MachineCpu

    @classmethod
    def take(cls, roles: Mapping[str, int | None]) -> RoleCpu:
        return cls(time.monotonic(), role_cpu_seconds(roles), MachineCpu.read())

    def percent_since(self, earlier: RoleCpu) -> dict[str, float]:
        """Each role's CPU between the two readings, in % of one core."""
        elapsed = self.at - earlier.at
        return {role: 100.0 * (used - earlier.seconds.get(role, used)) / elapsed
                if elapsed > 0 else 0.0 for role, used in self.seconds.items()}

    def machine_percent_since(self, earlier: RoleCpu) -> float:
        """The whole machine's busy CPU, in % of one core (200 = 2 cores)."""
        cores = os.cpu_count() or 1
        return cores * self.machine.busy_percent_since(earlier.machine)


@dataclass(frozen=True)
class MachineCpu:
    """Jiffies of the whole machine since boot (the `cpu` line of /proc/stat)."""

    busy: int
    steal: int
    total: int

    @classmethod
    def read(cls) -> MachineCpu:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        steal = values[7] if len(values) > 7 else 0
        total = sum(values[:8])
        return cls(busy=total - idle - steal, steal=steal, total=total)

    def busy_percent_since(self, earlier: MachineCpu) -> float:
        """% of all cores busy between two readings (100 = every core)."""
        total = self.total - earlier.total
        return 100.0 * (self.busy - earlier.busy) / total if total else 0.0

    def steal_percent_since(self, earlier: MachineCpu) -> float:
        total = self.total - earlier.total
        return 100.0 * (self.steal - earlier.steal) / total if total else 0.0


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds of some processes and of the machine at one instant."""

    at: float
    processes: dict[int, float]
    machine: MachineCpu

    @classmethod
    def take(cls, pids: Iterable[int]) -> CpuMark:
        return cls(time.monotonic(), {pid: process_cpu_seconds(pid) for pid in pids},
                   MachineCpu.read())


def wait_for_quiet(threshold: float, limit: float, sample: float = 2.0) -> float:
    """On a shared machine: wait, at most `limit` s, until the cores are busy
    below `threshold` % (other people's work). Returns the last busy % seen."""
    deadline = time.monotonic() + limit
    while True:
        before = MachineCpu.read()
        time.sleep(sample)
        busy = MachineCpu.read().busy_percent_since(before)
        if busy <= threshold or time.monotonic() > deadline:
            return busy


def core_percent(start: CpuMark, end: CpuMark, pids: Iterable[int]) -> float:
    """CPU of `pids` between two marks, as % of one core."""
    elapsed = end.at - start.at
    used = sum(end.processes[pid] - start.processes[pid] for pid in pids)
    return 100.0 * used / elapsed if elapsed > 0 else 0.0


def udp_drops(pids: Iterable[int]) -> dict[int, int]:
    """Datagrams the kernel dropped on each process's UDP sockets because the
    receive buffer was full (the `drops` column of /proc/net/udp and udp6,
    IPv4 + IPv6: ICE may pick either family). Counts of sockets closed since
    an earlier reading are gone, so compare readings of long-lived sockets."""
    table: dict[int, int] = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with open(name) as handle:
            next(handle)  # header
            for line in handle:
                fields = line.split()
                table[int(fields[9])] = int(fields[-1])  # inode -> drops
    return {pid: sum(table.get(inode, 0) for inode in _socket_inodes(pid)) for pid in pids}


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


# -- HTTP, Prometheus, waits ---------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as {'name{labels}': value} (no HELP/TYPE lines)."""
    status, text = http_get(url)
    if status != 200:
        raise BenchError(f"{url} answered {status}")
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def wait_until(what: str, check: Callable[[], bool], timeout: float,
               alive: Callable[[], None] = lambda: None, every: float = 0.2) -> None:
    """Poll `check` until true; `alive` raises if a child we rely on died."""
    deadline = time.monotonic() + timeout
    while not check():
        alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- reporting -----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_description() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores (nproc), {model}, {memory_gb:.0f} GB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


DOC_TITLE = "# Benchmarks\n\nNumbers measured on real processes by the scripts in `bench/`.\n"
# The reliability runs (soak, load) write their sections here.
RELIABILITY_DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
RELIABILITY_TITLE = "# Reliability and security, measured\n"


def update_doc_section(path: Path, name: str, body: str, title: str = DOC_TITLE) -> None:
    """Replace the generated section `name` of the doc (or append it): text
    outside the markers, written by people, is kept. A doc not there yet
    starts with `title`."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else title
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)

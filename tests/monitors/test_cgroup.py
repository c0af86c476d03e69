from __future__ import annotations

from pathlib import Path

import pytest

from lksup.monitors.cgroup import (
    CpuLimit,
    MemoryLimit,
    find_cpu_limit,
    find_memory_limit,
    parse_cfs_limit,
    parse_cpu_max,
    parse_cpu_stat_usage,
    parse_cpuacct_usage,
    parse_memory_limit,
    parse_proc_cgroup,
    parse_stat_value,
    search_dirs,
)
from lksup.monitors.sampling import (
    CgroupCpuReader,
    CgroupMemoryReader,
    HostCpuReader,
    HostMemoryReader,
    detect_cpu_reader,
    detect_memory_share_reader,
)

GIB = 1024**3
V1_NO_LIMIT = "9223372036854771712\n"


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def v2(tmp_path: Path, own: str = "/", **files: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    write(root, {"cgroup.controllers": "cpu memory\n", **files})
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def v1(
    tmp_path: Path, proc_text: str = "4:memory:/\n2:cpu,cpuacct:/\n", **files: str
) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir()
    write(root, files)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(proc_text)
    return root, proc


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("max\n", None),
        ("150000 100000\n", 1.5),
        ("50000 100000", 0.5),
        ("200000\n", 2.0),
        ("", None),
    ],
)
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1\n", "100000\n", None), ("50000\n", "100000\n", 0.5), ("400000", "100000", 4.0)],
)
def test_parse_cfs_limit(quota: str, period: str, cpus: float | None) -> None:
    assert parse_cfs_limit(quota, period) == cpus


def test_parse_usage() -> None:
    assert (
        parse_cpu_stat_usage("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n") == 2.5
    )
    assert parse_cpuacct_usage("3000000000\n") == 3.0
    with pytest.raises(ValueError, match="usage_usec"):
        parse_cpu_stat_usage("user_usec 1\n")


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("max\n", None),
        (f"{GIB}\n", GIB),
        (V1_NO_LIMIT, None),
        (f"{64 * GIB}\n", None),
        ("0\n", None),
    ],
)
def test_parse_memory_limit(text: str, limit: int | None) -> None:
    """``max``, and any value not below the host's RAM, mean no limit."""
    assert parse_memory_limit(text, host_total=16 * GIB) == limit


def test_parse_proc_cgroup_and_stat_files() -> None:
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n0::/init.scope\n"
    assert parse_proc_cgroup(text) == {
        "memory": "/docker/abc",
        "cpu": "/docker/abc",
        "cpuacct": "/docker/abc",
        "name=systemd": "/x",
        "": "/init.scope",
    }
    assert parse_stat_value("anon 5\ninactive_file 7\n", "inactive_file") == 7
    assert parse_stat_value("anon 5\n", "inactive_file") is None


def test_search_dirs_nearest_first_existing_only(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert search_dirs(tmp_path, "/a/b/c") == [tmp_path / "a" / "b", tmp_path / "a", tmp_path]
    assert search_dirs(tmp_path, "/") == [tmp_path]


# --- v2 --------------------------------------------------------------------------------------


def test_v2_without_limits(tmp_path: Path) -> None:
    """``max`` means no limit: the host readers are used."""
    root, proc = v2(
        tmp_path, **{"cpu.max": "max 100000\n", "cpu.stat": "usage_usec 1\n", "memory.max": "max\n"}
    )
    assert find_cpu_limit(root, proc) is None
    assert find_memory_limit(root, proc, host_total=16 * GIB) is None
    assert isinstance(detect_cpu_reader(root, proc), HostCpuReader)
    assert isinstance(detect_memory_share_reader(root, proc), HostMemoryReader)


def test_v2_cpu_quota(tmp_path: Path) -> None:
    """Usage is the cgroup's CPU time over wall time times the quota."""
    root, proc = v2(tmp_path, **{"cpu.max": "150000 100000\n", "cpu.stat": "usage_usec 1000000\n"})
    limit = find_cpu_limit(root, proc)
    assert limit == CpuLimit(2, 1.5, root / "cpu.stat")
    reader = CgroupCpuReader(limit, host_cpus=4)
    assert reader.read(10.0) is None  # the baseline
    (root / "cpu.stat").write_text("usage_usec 1750000\nuser_usec 1\n")
    assert reader.read(11.0) == pytest.approx(0.75 / 1.5)
    (root / "cpu.stat").write_text("usage_usec 4750000\n")
    assert reader.read(12.0) == 1.0  # over the quota (bursting) reads as saturated


def test_v2_limit_on_an_ancestor(tmp_path: Path) -> None:
    """A limit set on a parent cgroup (a pod, a slice) binds when the leaf has none."""
    root, proc = v2(
        tmp_path,
        own="/kubepods/pod1/ctr",
        **{
            "kubepods/pod1/ctr/cpu.max": "max 100000\n",
            "kubepods/pod1/ctr/cpu.stat": "usage_usec 1\n",
            "kubepods/pod1/ctr/memory.max": "max\n",
            "kubepods/pod1/cpu.max": "200000 100000\n",
            "kubepods/pod1/cpu.stat": "usage_usec 5\n",
            "kubepods/pod1/memory.max": f"{2 * GIB}\n",
        },
    )
    pod = root / "kubepods" / "pod1"
    assert find_cpu_limit(root, proc) == CpuLimit(2, 2.0, pod / "cpu.stat")
    assert find_memory_limit(root, proc, host_total=16 * GIB) == MemoryLimit(2, 2 * GIB, pod)


def test_v2_own_path_missing_under_the_mount(tmp_path: Path) -> None:
    """A host-namespace path that the container's mount does not show: the mount is the cgroup."""
    root, proc = v2(
        tmp_path,
        own="/system.slice/docker-abc.scope",
        **{"cpu.max": "50000 100000\n", "cpu.stat": "usage_usec 0\n"},
    )
    assert find_cpu_limit(root, proc) == CpuLimit(2, 0.5, root / "cpu.stat")


def test_v2_memory_share_is_working_set_over_limit(tmp_path: Path) -> None:
    root, proc = v2(
        tmp_path,
        **{
            "memory.max": f"{GIB}\n",
            "memory.current": f"{GIB // 2}\n",
            "memory.stat": f"anon 1\ninactive_file {GIB // 4}\n",
        },
    )
    limit = find_memory_limit(root, proc, host_total=16 * GIB)
    assert limit == MemoryLimit(2, GIB, root)
    assert limit.read_usage() == GIB // 4
    assert CgroupMemoryReader(limit).read() == 0.25


# --- v1 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_v1_cpu_quota(tmp_path: Path, layout: str) -> None:
    cpu, acct = ("cpu", "cpuacct") if layout == "separate" else ("cpu,cpuacct", "cpu,cpuacct")
    root, proc = v1(
        tmp_path,
        **{
            f"{cpu}/cpu.cfs_quota_us": "50000\n",
            f"{cpu}/cpu.cfs_period_us": "100000\n",
            f"{acct}/cpuacct.usage": "2000000000\n",
        },
    )
    limit = find_cpu_limit(root, proc)
    assert limit == CpuLimit(1, 0.5, root / acct / "cpuacct.usage")
    reader = CgroupCpuReader(limit, host_cpus=2)
    assert reader.read(0.0) is None
    (root / acct / "cpuacct.usage").write_text("2250000000\n")
    assert reader.read(1.0) == pytest.approx(0.25 / 0.5)


def test_v1_nested_cgroup(tmp_path: Path) -> None:
    """The process's own cgroup directory is read when the mount shows it."""
    root, proc = v1(
        tmp_path,
        proc_text="4:memory:/job/1\n2:cpu,cpuacct:/job/1\n",
        **{
            "cpu/cpu.cfs_quota_us": "-1\n",
            "cpu/cpu.cfs_period_us": "100000\n",
            "cpu/job/1/cpu.cfs_quota_us": "300000\n",
            "cpu/job/1/cpu.cfs_period_us": "100000\n",
            "cpuacct/cpuacct.usage": "1\n",
            "cpuacct/job/1/cpuacct.usage": "2\n",
            "memory/memory.limit_in_bytes": V1_NO_LIMIT,
            "memory/job/1/memory.limit_in_bytes": f"{GIB}\n",
            "memory/job/1/memory.usage_in_bytes": f"{GIB // 2}\n",
            "memory/job/1/memory.stat": f"inactive_file 9\ntotal_inactive_file {GIB // 4}\n",
        },
    )
    assert find_cpu_limit(root, proc) == CpuLimit(
        1, 3.0, root / "cpuacct" / "job" / "1" / "cpuacct.usage"
    )
    limit = find_memory_limit(root, proc, host_total=16 * GIB)
    assert limit == MemoryLimit(1, GIB, root / "memory" / "job" / "1")
    assert CgroupMemoryReader(limit).read() == 0.25


def test_v1_without_limits(tmp_path: Path) -> None:
    """Quota -1 and the page-rounded 2**63 - 1 memory limit mean no limit."""
    root, proc = v1(
        tmp_path,
        **{
            "cpu/cpu.cfs_quota_us": "-1\n",
            "cpu/cpu.cfs_period_us": "100000\n",
            "cpuacct/cpuacct.usage": "1\n",
            "memory/memory.limit_in_bytes": V1_NO_LIMIT,
            "memory/memory.usage_in_bytes": "1\n",
        },
    )
    assert find_cpu_limit(root, proc) is None
    assert find_memory_limit(root, proc, host_total=16 * GIB) is None


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert find_cpu_limit(tmp_path, tmp_path / "missing") is None
    assert find_memory_limit(tmp_path, tmp_path / "missing", host_total=GIB) is None


def test_torn_or_negative_deltas_are_discarded(tmp_path: Path) -> None:
    """A delta the host cannot have produced gives no sample rather than a wrong one."""
    stat = tmp_path / "cpu.stat"
    stat.write_text("usage_usec 0\n")
    reader = CgroupCpuReader(CpuLimit(2, 1.0, stat), host_cpus=2)
    assert reader.read(0.0) is None
    stat.write_text("usage_usec 10000000\n")  # 10 CPU seconds in 1 s on 2 CPUs
    assert reader.read(1.0) is None
    stat.write_text("usage_usec 9000000\n")  # went backwards
    assert reader.read(2.0) is None
    stat.write_text("usage_usec 9500000\n")
    assert reader.read(3.0) == pytest.approx(0.5)
    assert reader.read(3.0) is None  # no time elapsed

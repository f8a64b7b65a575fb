"""Every environment variable is read in vaekernels/envs.py and nowhere else, and its readers check values."""
import re
from pathlib import Path

import pytest

from vaekernels import envs

ROOT = Path(__file__).parents[1]
READS = re.compile(r"os\.environ|os\.getenv|getenv\(")


def test_variables_are_read_in_envs_only():
    allowed = {
        ROOT / "vaekernels" / "envs.py",
        # builds the environment of its compiling child process from this one's (drops TRITON_INTERPRET): it reads
        # no setting
        ROOT / "vaekernels" / "kernel_report.py",
    }
    sources = list((ROOT / "vaekernels").rglob("*.py")) + list((ROOT / "csrc").glob("*.*")) + [ROOT / "setup.py"]
    readers = sorted(str(p.relative_to(ROOT)) for p in sources if p not in allowed and READS.search(p.read_text()))
    assert readers == []


def test_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert envs.torchrun() == (1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert envs.torchrun() == (4, 3)
    for name, bad in (("WORLD_SIZE", "0"), ("WORLD_SIZE", "two"), ("LOCAL_RANK", "-1")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=f"{name} must be"):
            envs.torchrun()
        monkeypatch.setenv(name, "1")


def test_readers(monkeypatch):
    monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "2.5")
    assert envs.chunk_mb() == 2.5
    for bad in ("lots", "0", "-1", "nan", "inf", "-inf"):
        monkeypatch.setenv("VAEKERNELS_CHUNK_MB", bad)
        with pytest.raises(ValueError, match="VAEKERNELS_CHUNK_MB must be a positive, finite number"):
            envs.chunk_mb()
    monkeypatch.delenv("VAEKERNELS_CHUNK_MB")
    assert envs.chunk_mb() is None
    monkeypatch.setenv("VAEKERNELS_BACKEND", "")
    assert envs.backend() == "auto"
    monkeypatch.setenv("VAEKERNELS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="VAEKERNELS_BACKEND: expected one of auto"):
        envs.backend()
    monkeypatch.setenv("VAEKERNELS_CPU_AMX", "0")
    assert envs.cpu_amx() is False


def test_report_archs(monkeypatch):
    monkeypatch.delenv("VAEKERNELS_REPORT_ARCHS", raising=False)
    assert envs.report_archs() == (80, 90)
    monkeypatch.setenv("VAEKERNELS_REPORT_ARCHS", "90")
    assert envs.report_archs() == (90,)
    for bad in ("", "75", "90,", "sm_90", "80;90"):
        monkeypatch.setenv("VAEKERNELS_REPORT_ARCHS", bad)
        with pytest.raises(ValueError, match="VAEKERNELS_REPORT_ARCHS must list 80 and/or 90"):
            envs.report_archs()

from reference.cpuinfo import cpu_info

ENTRY = """processor\t: {n}
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 {n}
flags\t\t: fpu avx2 avx512f avx512_bf16

"""


def test_reads_the_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ENTRY.format(n=0) + ENTRY.format(n=1))
    info = cpu_info(str(path))
    assert (info.model, info.vendor) == ("AMD EPYC 9R14 0", "AuthenticAMD")
    assert {"avx512_bf16", "avx2"} <= info.flags and "avx512" not in info.flags


def test_without_proc_the_fields_are_empty(tmp_path):
    info = cpu_info(str(tmp_path / "absent"))
    assert info.vendor == "" and info.flags == frozenset() and info.model  # platform's name for the machine

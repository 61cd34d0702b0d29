"""HV_VP_SET, processor masks and the VP index map (TLFS datatypes/hv_vp_set.md; inventory §6.3.4)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hv1.hv.vpset import (
    ALL_VPS,
    HV_GENERIC_SET_ALL,
    HV_GENERIC_SET_SPARSE_4K,
    MAX_VP_INDEX,
    VpSet,
    VpSetError,
    encode_vp_set,
    indexes_to_mask,
    mask_to_indexes,
    parse_vp_index_map,
    parse_vp_set,
    processor_mask_set,
    vp_set_size,
)
from hv1.tlfs.status import HvStatus


def raw(fmt: int, valid: int, banks: list[int]) -> bytes:
    return struct.pack("<QQ", fmt, valid) + b"".join(struct.pack("<Q", b) for b in banks)


def test_tlfs_example_0_5_130() -> None:
    # datatypes/hv_vp_set.md "Processor Set Example": {0, 5, 130} = Format 0, ValidBanksMask 0x5,
    # BankContents {0x21, 0x4}.
    data = raw(HV_GENERIC_SET_SPARSE_4K, 0x5, [0x21, 0x4])
    s = parse_vp_set(data, var_header_qwords=2)
    assert s == VpSet(all=False, indexes=frozenset({0, 5, 130}))
    assert encode_vp_set([0, 5, 130]) == data


def test_all_format() -> None:
    s = parse_vp_set(raw(HV_GENERIC_SET_ALL, 0, []), var_header_qwords=0)
    assert s.all
    assert s.resolve({0, 1, 65}) == {0, 1, 65}
    assert encode_vp_set(None, all_vps=True) == raw(HV_GENERIC_SET_ALL, 0, [])


def test_all_format_with_banks_still_checks_the_header_size() -> None:
    assert parse_vp_set(raw(HV_GENERIC_SET_ALL, 0x3, [1, 2]), var_header_qwords=2).all
    with pytest.raises(VpSetError) as e:
        parse_vp_set(raw(HV_GENERIC_SET_ALL, 0x3, [1, 2]), var_header_qwords=0)
    assert e.value.status == HvStatus.INVALID_HYPERCALL_INPUT


def test_empty_bank_is_legal() -> None:
    # "it is valid state for the corresponding element in BanksContents can be all 0s"
    s = parse_vp_set(raw(0, 0x3, [0, 0x1]), var_header_qwords=2)
    assert s.indexes == {64}
    assert encode_vp_set([64], keep_empty_banks=[0]) == raw(0, 0x3, [0, 0x1])


def test_no_banks_is_the_empty_set() -> None:
    s = parse_vp_set(raw(0, 0, []), var_header_qwords=0)
    assert not s.all and s.indexes == frozenset()
    assert s.resolve({0, 1}) == frozenset()


@pytest.mark.parametrize("var", [0, 1, 3, 64])
def test_var_header_mismatch_is_invalid_hypercall_input(var: int) -> None:
    with pytest.raises(VpSetError) as e:
        parse_vp_set(raw(0, 0x5, [1, 1]) + bytes(8 * 64), var_header_qwords=var)
    assert e.value.status == HvStatus.INVALID_HYPERCALL_INPUT


@pytest.mark.parametrize("fmt", [2, 3, 0x100, 1 << 63])
def test_unknown_format_is_invalid_parameter(fmt: int) -> None:
    with pytest.raises(VpSetError) as e:
        parse_vp_set(raw(fmt, 0, []), var_header_qwords=0)
    assert e.value.status == HvStatus.INVALID_PARAMETER


def test_truncated() -> None:
    with pytest.raises(VpSetError) as e:
        parse_vp_set(b"\0" * 8)
    assert e.value.status == HvStatus.INVALID_HYPERCALL_INPUT
    with pytest.raises(VpSetError):
        parse_vp_set(raw(0, 0x3, [1]))  # two banks announced, one present


def test_resolve_ignores_vps_that_do_not_exist() -> None:
    s = parse_vp_set(raw(0, 0x1, [0b1011]), var_header_qwords=1)
    assert s.resolve({0, 1, 2}) == {0, 1}
    assert ALL_VPS.resolve([3, 7]) == {3, 7}


def test_masks() -> None:
    assert mask_to_indexes(0x51) == {0, 4, 6}  # the TLFS flush example: VPs 0, 4 and 6
    assert mask_to_indexes(1 << 63) == {63}
    assert mask_to_indexes(0x3, base=128) == {128, 129}
    assert indexes_to_mask([0, 4, 6]) == 0x51
    with pytest.raises(ValueError):
        indexes_to_mask([64])
    assert processor_mask_set(0) == VpSet(all=False, indexes=frozenset())


def test_size() -> None:
    assert vp_set_size(raw(0, 0x5, [])) == 32
    assert vp_set_size(b"") == 16


def test_describe() -> None:
    assert ALL_VPS.describe() == "all"
    assert VpSet(False, frozenset({65, 0})).describe() == "0,65"
    assert VpSet(False).describe() == "-"


@given(
    fmt=st.sampled_from([0, 1, 2, (1 << 64) - 1]),
    valid=st.integers(0, (1 << 64) - 1),
    banks=st.lists(st.integers(0, (1 << 64) - 1), max_size=70),
    var=st.one_of(st.none(), st.integers(0, 1023)),
    tail=st.binary(max_size=16),
)
def test_parse_never_raises_anything_else(
    fmt: int, valid: int, banks: list[int], var: int | None, tail: bytes
) -> None:
    data = raw(fmt, valid, banks) + tail
    try:
        s = parse_vp_set(data, var)
    except VpSetError as e:
        assert e.status in (HvStatus.INVALID_HYPERCALL_INPUT, HvStatus.INVALID_PARAMETER)
        return
    assert s.all or all(0 <= i <= MAX_VP_INDEX for i in s.indexes)


@given(st.dictionaries(st.integers(0, 63), st.integers(0, (1 << 64) - 1), max_size=64))
def test_random_banks_decode_exactly(contents: dict[int, int]) -> None:
    # Any combination of valid banks and bank masks (zero masks included) decodes to exactly the VPs
    # whose bits are set, with VarHeaderSize = popcount(ValidBanksMask).
    valid = 0
    for b in contents:
        valid |= 1 << b
    data = raw(0, valid, [contents[b] for b in sorted(contents)])
    s = parse_vp_set(data, var_header_qwords=len(contents))
    expected = {64 * b + i for b, m in contents.items() for i in range(64) if m >> i & 1}
    assert s.indexes == expected
    assert encode_vp_set(expected, keep_empty_banks=contents) == data


@given(st.frozensets(st.integers(0, MAX_VP_INDEX), max_size=100))
def test_encode_roundtrip(indexes: frozenset[int]) -> None:
    data = encode_vp_set(indexes)
    nbanks = (len(data) - 16) // 8
    assert parse_vp_set(data, nbanks).indexes == indexes


# --- VP index map -------------------------------------------------------------------------------


def test_vp_index_map() -> None:
    assert parse_vp_index_map("0,65,130,3", 4) == [0, 65, 130, 3]
    assert parse_vp_index_map(" 0, 0x41 ", 2) == [0, 65]
    assert parse_vp_index_map("0", 1) == [0]


@pytest.mark.parametrize(
    ("spec", "cpus", "needle"),
    [
        ("0,1", 3, "2 entries for 3"),
        ("0,1,1", 3, "distinct"),
        ("1,0", 2, "boot processor"),
        ("0,4096", 2, "outside"),
        ("0,-1", 2, "outside"),
        ("0,x", 2, "integers"),
        ("", 1, "comma-separated"),
        ("0,,1", 3, "comma-separated"),
    ],
)
def test_vp_index_map_errors(spec: str, cpus: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_vp_index_map(spec, cpus)

"""The capability model (hv/caps.py) and CPUID composition (hv/cpuid.py).

TLFS feature-discovery.md, the Requirements doc, tlfs-inventory.md §1-2.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hv1.hv import caps as capsmod
from hv1.hv.caps import (
    APIC_MODES,
    DEVIATIONS,
    FEATURES,
    FEATURES_BY_NAME,
    Caps,
    Feature,
    build_caps,
    describe,
    edx_gate,
    grant_gate,
    implemented_features,
    parse_profile,
    privilege_gate,
    with_features,
)
from hv1.hv.cpuid import CpuidEntry, compose
from hv1.tlfs.feature_discovery import (
    CPUID_1_ECX_HYPERVISOR_PRESENT,
    HV_INTERFACE_HV1,
    SPINLOCK_RETRIES_NEVER,
    FeaturesEdx,
    Recommendations,
)
from hv1.tlfs.partition import PRIVILEGES_MUST_BE_CLEAR, PRIVILEGES_MUST_BE_SET, PartitionPrivilege

P = PartitionPrivilege


def _union(caps: Caps, attr: str) -> int:
    v = 0
    for name in caps.features:
        v |= int(getattr(FEATURES_BY_NAME[name], attr))
    return v


def assert_only_enabled_bits(caps: Caps) -> None:
    """Never advertise a bit that no enabled (hence implemented) feature sets."""
    assert caps.privileges == _union(caps, "privileges")
    assert caps.features_ecx == _union(caps, "features_ecx")
    assert caps.features_edx == _union(caps, "features_edx")
    assert caps.recommendations == _union(caps, "recommendations")
    assert caps.hardware_features == _union(caps, "hardware")
    for name in caps.features:
        assert caps.apic_mode in FEATURES_BY_NAME[name].implemented_in


# --- Requirements doc "Requirements for a Minimal HV#1 Interface" ---------------------------------


@pytest.mark.parametrize("mode", APIC_MODES)
def test_req_minimal_profile_is_exactly_the_requirements_set(mode: str) -> None:
    c = parse_profile("minimal", apic_mode=mode)
    leaves = c.cpuid_leaves()
    assert sorted(leaves) == list(range(0x40000000, 0x40000006))
    assert leaves[0x40000000] == (0x40000005, 0x7263694D, 0x666F736F, 0x76482074)  # "Microsoft Hv"
    assert leaves[0x40000001] == (HV_INTERFACE_HV1, 0, 0, 0)  # "Hv#1"
    assert leaves[0x40000002] == (0, 0, 0, 0)
    # AccessHypercallMsrs + AccessVpIndex only; ECX/EDX zero.
    assert leaves[0x40000003] == (0x60, 0, 0, 0)
    # No recommendation; spinlock retries "never notify" (0xFFFFFFFF, a Requirements-doc value).
    assert leaves[0x40000004] == (0, SPINLOCK_RETRIES_NEVER, 0, 0)
    # Implementation limits (not a feature: the same in every profile): VP indexes below 4096 (PDF
    # §7.8: "A virtual processor index must be less than the maximum number of virtual processors"),
    # 64 LPs, no interrupt remapping.
    assert leaves[0x40000005] == (4096, 64, 0, 0)
    assert c.features == {"hypercall-msrs", "vp-index"}


@pytest.mark.parametrize("mode", APIC_MODES)
def test_req_default_keeps_forbidden_partition_flags_clear(mode: str) -> None:
    c = parse_profile("default", apic_mode=mode)
    assert c.privileges & PRIVILEGES_MUST_BE_SET == PRIVILEGES_MUST_BE_SET
    assert c.privileges & PRIVILEGES_MUST_BE_CLEAR == 0
    assert c.cpuid_leaves()[0x40000000][0] >= 0x40000005
    assert_only_enabled_bits(c)


@pytest.mark.parametrize("mode", APIC_MODES)
def test_default_is_every_implemented_default_feature(mode: str) -> None:
    c = parse_profile("default", apic_mode=mode)
    for f in FEATURES:
        ok = (
            mode in f.implemented_in
            and (f.default or f.mandatory)
            and all(r in c.features for r in f.requires)
        )
        assert (f.name in c.features) == ok, f.name


def test_default_leaves_cover_0x40000000_to_0x4000000a() -> None:
    c = parse_profile("default")
    leaves = c.cpuid_leaves()
    assert sorted(leaves) == list(range(0x40000000, 0x4000000B))
    assert leaves[0x40000000][0] == 0x4000000A
    for leaf in range(0x40000006, 0x4000000B):
        assert leaves[leaf] == (0, 0, 0, 0)


def test_default_features_implemented_now() -> None:
    c = parse_profile("default")
    assert c.has_feature(FeaturesEdx.GuestCrashRegsAvailable)
    assert c.has_feature(FeaturesEdx.XmmRegistersForFastHypercallAvailable)
    assert c.has_feature(FeaturesEdx.FastHypercallOutputAvailable)
    assert c.has_feature(FeaturesEdx.HypercallMsrLockAvailable)
    assert c.has_privilege(P.AccessResetReg)
    assert c.has_privilege(P.EnableExtendedHypercalls)
    assert c.has_recommendation(Recommendations.UseHvRegisterForReset)
    assert c.has_recommendation(Recommendations.UseRelaxedTiming)
    assert c.spinlock_retries == capsmod.DEFAULT_SPINLOCK_RETRIES
    assert not c.has_privilege(P.AccessPartitionId)


# --- CPUID 0x40000002 (deviation) -----------------------------------------------------------------


def test_version_leaf_zero_until_guest_os_id_and_documented_deviation() -> None:
    c = dataclasses.replace(parse_profile("default"), version=(14393, 0xA0000, 0, 0))
    assert c.cpuid_leaves()[0x40000002] == (0, 0, 0, 0)
    assert c.cpuid_leaves(guest_os_id_set=True)[0x40000002] == (14393, 0xA0000, 0, 0)
    assert any("0x40000002" in topic for topic, _ in DEVIATIONS)


# --- profile parsing ------------------------------------------------------------------------------


def test_profile_edits() -> None:
    c = parse_profile("default,-crash,+partition-id")
    assert not c.has_feature(FeaturesEdx.GuestCrashRegsAvailable)
    assert c.has_privilege(P.AccessPartitionId)
    assert "crash" not in c.features and "partition-id" in c.features
    assert c.profile == "default,-crash,+partition-id"


def test_profile_minimal_plus_feature_keeps_minimal_leaf_range() -> None:
    c = parse_profile("minimal,+crash")
    assert c.features == {"hypercall-msrs", "vp-index", "crash"}
    assert c.max_leaf == 0x40000005
    assert c.cpuid_leaves()[0x40000003] == (0x60, 0, 0, FeaturesEdx.GuestCrashRegsAvailable)


@pytest.mark.parametrize("spec", ["", "default", " default , ", "+crash", "crash"])
def test_profile_default_base(spec: str) -> None:
    assert parse_profile(spec).features == parse_profile("default").features


def test_profile_bare_name_adds() -> None:
    assert "partition-id" in parse_profile("partition-id").features
    assert "partition-id" in parse_profile("minimal, partition-id").features


def test_profile_long_spin_wait_off_means_never_notify() -> None:
    assert parse_profile("default,-long-spin-wait").spinlock_retries == SPINLOCK_RETRIES_NEVER


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("default,+frobnicate", ["frobnicate", "features:", "minimal"]),
        ("-nope", ["nope"]),
        ("default,-vp-index", ["mandatory"]),
        ("minimal,-hypercall-msrs", ["mandatory"]),
        ("default,minimal", ["first"]),
        ("maximal", ["maximal"]),
    ],
)
def test_profile_errors_are_clear(spec: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        parse_profile(spec)
    for w in words:
        assert w in str(e.value)


def test_profile_unimplemented_feature_is_refused() -> None:
    name = next(f.name for f in FEATURES if not f.implemented_in)
    with pytest.raises(ValueError, match="not implemented"):
        parse_profile(f"default,+{name}")


def test_profile_unknown_apic_mode() -> None:
    with pytest.raises(ValueError, match="APIC mode"):
        parse_profile("default", apic_mode="x2")


@pytest.fixture
def with_fake_synic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table where synic and stimer are implemented, to exercise `requires`."""
    feats = tuple(
        dataclasses.replace(f, implemented_in=frozenset(APIC_MODES)) if f.name in ("synic", "stimer") else f
        for f in FEATURES
    )
    monkeypatch.setattr(capsmod, "FEATURES", feats)
    monkeypatch.setattr(capsmod, "FEATURES_BY_NAME", {f.name: f for f in feats})


@pytest.mark.usefixtures("with_fake_synic")
def test_profile_removing_a_requirement_drops_inherited_dependents() -> None:
    assert {"synic", "stimer"} <= parse_profile("default").features
    c = parse_profile("default,-synic")
    assert not {"synic", "stimer", "auto-eoi-deprecated"} & c.features
    assert not c.has_privilege(P.AccessSyntheticTimerRegs)


@pytest.mark.usefixtures("with_fake_synic")
def test_profile_explicit_feature_with_missing_requirement_is_an_error() -> None:
    with pytest.raises(ValueError, match="requires 'synic'"):
        parse_profile("default,-synic,+stimer")
    with pytest.raises(ValueError, match="requires 'synic'"):
        parse_profile("minimal,+stimer")


def test_build_caps_checks_everything() -> None:
    with pytest.raises(ValueError, match="unknown"):
        build_caps(["bogus"])
    with pytest.raises(ValueError, match="max hypervisor CPUID leaf"):
        build_caps([], max_leaf=0x40000004)
    c = build_caps(["crash"], "user")
    assert c.features == {"crash", "hypercall-msrs", "vp-index"}


def test_with_features() -> None:
    c = with_features(parse_profile("minimal"), "partition-id")
    assert c.has_privilege(P.AccessPartitionId) and c.max_leaf == 0x40000005


@given(
    st.sampled_from(APIC_MODES),
    st.sampled_from(["minimal", "default"]),
    st.lists(st.tuples(st.sampled_from("+-"), st.sampled_from([f.name for f in FEATURES])), max_size=8),
)
def test_profiles_never_advertise_unimplemented_bits(
    mode: str, base: str, edits: list[tuple[str, str]]
) -> None:
    spec = ",".join([base] + [s + n for s, n in edits])
    try:
        c = parse_profile(spec, apic_mode=mode)
    except ValueError:
        return
    assert_only_enabled_bits(c)
    assert c.privileges & PRIVILEGES_MUST_BE_SET == PRIVILEGES_MUST_BE_SET


# --- gates ----------------------------------------------------------------------------------------


def test_gates() -> None:
    m, d = parse_profile("minimal"), parse_profile("default")
    g = privilege_gate(P.AccessResetReg)
    assert not g.allows(m) and g.allows(d) and d.allows(g)
    e = edx_gate(FeaturesEdx.GuestCrashRegsAvailable)
    assert not e.allows(m) and e.allows(d)
    gr = grant_gate("partition-properties")
    assert not gr.allows(d) and gr.allows(parse_profile("default,+partition-properties"))
    assert capsmod.ALWAYS.allows(m)
    assert "AccessResetReg" in g.describe() and "grant:partition-properties" in gr.describe()


def test_feature_table_is_consistent() -> None:
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    for f in FEATURES:
        assert isinstance(f, Feature)
        assert f.implemented_in <= set(APIC_MODES)
        for r in f.requires:
            assert r in FEATURES_BY_NAME
    assert set(implemented_features("kernel")) >= {"hypercall-msrs", "vp-index", "crash", "reset"}


# --- describe -------------------------------------------------------------------------------------


def test_describe_decodes_every_leaf_bit_by_bit() -> None:
    text = describe(parse_profile("default"))
    for leaf in range(0x40000000, 0x4000000B):
        assert f"CPUID {leaf:#010x}" in text
    assert "'Hv#1'" in text and "Microsoft Hv" in text
    assert "[x]  5 AccessHypercallMsrs" in text
    assert "[x]  6 AccessVpIndex" in text
    assert "[ ]  1 AccessPartitionId" in text  # EBX bit numbering
    assert "[x] 10 GuestCrashRegsAvailable" in text
    assert "spinlock retries" in text
    for topic, _ in DEVIATIONS:
        assert topic in text


def test_describe_minimal() -> None:
    text = describe(parse_profile("minimal"))
    assert "CPUID 0x40000006" not in text
    assert "(never notify)" in text


# --- CPUID composition ----------------------------------------------------------------------------


def test_compose_sets_hypervisor_present_and_replaces_foreign_leaves() -> None:
    host = [
        CpuidEntry(0, eax=0xD),
        CpuidEntry(1, ecx=0x1234),
        CpuidEntry(0x40000000, eax=0x40000001, ebx=0x4B4D564B),  # "KVMKVMKVM"
        CpuidEntry(0x40000001, eax=0x1234),
        CpuidEntry(0x40000100, eax=1),
    ]
    c = parse_profile("minimal")
    out = compose(host, c)
    by_fn = {(e.function, e.index): e for e in out}
    assert by_fn[(1, 0)].ecx == 0x1234 | CPUID_1_ECX_HYPERVISOR_PRESENT
    assert (0x40000100, 0) not in by_fn
    for leaf, regs in c.cpuid_leaves().items():
        e = by_fn[(leaf, 0)]
        assert (e.eax, e.ebx, e.ecx, e.edx) == regs
    assert [e.function for e in out] == sorted(e.function for e in out)


@pytest.mark.parametrize("mode", APIC_MODES)
@pytest.mark.parametrize("profile", ["minimal", "default", "default,+reenlightenment"])
def test_fd_implementation_limits_cover_every_vp_index_and_vp(profile: str, mode: str) -> None:
    """feature-discovery.md 0x40000005 and PDF §7.8 "A virtual processor index must be less than the
    maximum number of virtual processors per partition": every VP index --vp-index-map accepts is
    below EAX, every --cpus count is within it, and EAX is not -1 (which would forbid the non-Ex
    flush recommendations, Requirements doc "Maximum Supported Virtual Processors")."""
    from hv1.hv.vpset import MAX_VP_INDEX
    from hv1.machine.machine import MAX_CPUS

    eax, ebx, ecx, edx = parse_profile(profile, apic_mode=mode).cpuid_leaves()[0x40000005]
    assert MAX_VP_INDEX < eax != 0xFFFF_FFFF and eax >= MAX_CPUS
    assert ebx == 64 and ecx == 0 and edx == 0


@pytest.mark.parametrize("mode", APIC_MODES)
def test_root_profile_grants_the_virtualization_host_privileges(mode: str) -> None:
    """virtualization-host.md: a virtualization host has CreatePartitions (and the pool and port
    privileges it needs); a plain guest keeps them clear (the Requirements doc)."""
    root = parse_profile("root", apic_mode=mode)
    want = P.CreatePartitions | P.AccessMemoryPool | P.CreatePort | P.AccessPartitionId
    assert root.privileges & want == want
    assert not root.privileges & P.CpuManagement  # not the root of the machine (caps.DEVIATIONS)
    assert parse_profile("default", apic_mode=mode).features < root.features
    assert "create-partitions" not in parse_profile("root,-create-partitions", apic_mode=mode).features
    assert parse_profile("default,+memory-pool", apic_mode=mode).privileges & P.AccessMemoryPool

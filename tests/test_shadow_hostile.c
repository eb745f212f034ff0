/*
 * tests/test_shadow_hostile.c - one scenario per hostile shadow class (INVARIANTS.md,
 * "Classes of hostile input", the Shadow line, and the guest-entry classes that apply to
 * shadow paging). Each asserts what a user of the library can observe - return codes,
 * fault outcomes and error codes, translations through the shadow tables compared with
 * the guest's own tables, guest memory, statistics - and ends with a clean audit.
 *
 * The guest's hardware writes are played by the test: a write goes straight to the frame
 * when the shadow tables let it (as the MMU would, without a fault), otherwise it faults
 * and follows the outcome. So a shadow leaf left writable where it must not be is a write
 * the engine never sees, and the checks below catch it.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "shadow_helpers.h"

static mv_host_t *h;
static struct th_platform *tp;

/* Guest layout: L4 at gfn 1, L3 at 2, L2 at 3, L1 at 4 and 5; data from gfn 16. */
#define G_L4 1
#define G_L3 2
#define G_L2 3
#define G_L1 4
#define G_L1B 5
#define VA_BASE 0x400000ull /* L2[2] -> G_L1: VA_BASE + i pages -> gfn 16 + i (i < 64) */
#define VA_B 0x600000ull    /* L2[3] -> G_L1B: VA_B + i pages -> gfn 80 + i (i < 64) */
#define TABLE (PTE_P | PTE_W | PTE_U)
#define RAM_PAGES 4096

/* A host per scenario, so that one failing leaves the others their own clean state
 * (each scenario audits the host when its domains are gone). */
static int setup(void **state)
{
    (void)state;
    h = th_host_create(512 * TH_MiB, NULL, &tp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mv_host_destroy(h);
    th_platform_destroy(tp);
    return 0;
}

static void build_tree(mv_domain_t *d)
{
    gpoke(d, G_L4, 0, (G_L3 << 12) | TABLE);
    gpoke(d, G_L3, 0, (G_L2 << 12) | TABLE);
    gpoke(d, G_L2, 2, (G_L1 << 12) | TABLE);
    gpoke(d, G_L2, 3, (G_L1B << 12) | TABLE);
    for (unsigned i = 0; i < 64; i++) {
        gpoke(d, G_L1, i, ((16ull + i) << 12) | TABLE);
        gpoke(d, G_L1B, i, ((80ull + i) << 12) | TABLE);
    }
}

static mv_domain_t *tree_dom(uint32_t id, uint32_t nr_vcpus, uint32_t phys_bits)
{
    mv_domain_t *d = shd_domain(h, id, nr_vcpus, 0, RAM_PAGES, 512, phys_bits);
    build_tree(d);
    return d;
}

/* The hardware's write of 8 bytes at va: straight to the frame when the shadow allows it,
 * otherwise the fault and what its outcome says (an emulated write for a page table). */
static void hw_write(mv_vcpu_t *v, mv_paddr_t root, uint64_t va, uint64_t val)
{
    for (int tries = 0; tries < 4; tries++) {
        struct sw s = swalk(h, root, va);
        if (s.present && s.w) {
            uint64_t *p = (uint64_t *)((uint8_t *)mv_frame_va(h, s.mfn) + (va & 0xff8));
            __atomic_store_n(p, val, __ATOMIC_RELEASE);
            return;
        }
        mv_paddr_t gpa;
        uint32_t kind = shd_fault(v, va, MV_PFEC_W | (s.present ? MV_PFEC_P : 0), NULL, &gpa);
        if (kind == MV_SHADOW_EMULATE) {
            assert_int_equal(mv_shadow_emulate_write(v, gpa & ~7ull, &val, 8), 0);
            return;
        }
        assert_int_equal(kind, MV_SHADOW_FIXED);
    }
    fail_msg("va %#llx: no write after 4 faults", (unsigned long long)va);
}

/* ---- Guest entries naming memory outside guest RAM or beyond the address width ------- */

static void test_outside_ram(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(1, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    /* Leaves: a hole inside RAM's range, a gfn far beyond RAM inside 40 bits, bit 40, 51. */
    gpoke(d, G_L1, 1, (5000ull << 12) | TABLE);
    gpoke(d, G_L1, 2, (1ull << 39) | TABLE);
    gpoke(d, G_L1, 3, (1ull << 40) | (17ull << 12) | TABLE);
    gpoke(d, G_L1, 4, (1ull << 51) | (18ull << 12) | TABLE);
    /* Tables: a hole, an address beyond the width, at L2, L3 and L4. */
    gpoke(d, G_L2, 4, (6000ull << 12) | TABLE);
    gpoke(d, G_L2, 5, (1ull << 45) | (G_L1 << 12) | TABLE);
    gpoke(d, G_L3, 1, (7000ull << 12) | TABLE);
    gpoke(d, G_L4, 1, (1ull << 47) | (G_L3 << 12) | TABLE);
    /* 2 MiB leaves: beyond RAM (aligned) and beyond the width. */
    gpoke(d, G_L2, 6, (8192ull << 12) | TABLE | PTE_PS);
    gpoke(d, G_L2, 7, (1ull << 40) | TABLE | PTE_PS);
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    struct mv_shadow_stats st0 = shd_stats(d);

    /* Within the width but not RAM: the device model's business, nothing shadowed. */
    mv_paddr_t gpa;
    assert_int_equal(shd_fault(v, VA_BASE + 4096 + 0x18, 0, NULL, &gpa), MV_SHADOW_MMIO);
    assert_int_equal(gpa, (5000ull << 12) + 0x18);
    assert_int_equal(shd_fault(v, VA_BASE + 2 * 4096, MV_PFEC_W, NULL, &gpa), MV_SHADOW_MMIO);
    assert_int_equal(gpa, 1ull << 39);
    assert_int_equal(shd_fault(v, (6ull << 21) + 0x5123, 0, NULL, &gpa), MV_SHADOW_MMIO);
    assert_int_equal(gpa, ((8192ull + 5) << 12) + 0x123);
    for (unsigned i = 1; i <= 2; i++)
        assert_false(swalk(h, root, VA_BASE + i * 4096).present);
    assert_false(swalk(h, root, 6ull << 21).present);

    /* Beyond the width, at any level: reserved, with the access's W and U echoed. */
    const uint64_t rsvd_va[] = {VA_BASE + 3 * 4096, VA_BASE + 4 * 4096, 5ull << 21, 7ull << 21,
                                1ull << 39};
    for (unsigned i = 0; i < sizeof(rsvd_va) / sizeof(rsvd_va[0]); i++) {
        uint32_t code;
        assert_int_equal(shd_fault(v, rsvd_va[i], MV_PFEC_W | MV_PFEC_U, &code, NULL),
                         MV_SHADOW_INJECT);
        assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD | MV_PFEC_W | MV_PFEC_U);
        /* A fetch without NXE or SMEP carries no I/D bit. */
        assert_int_equal(shd_fault(v, rsvd_va[i], MV_PFEC_ID, &code, NULL), MV_SHADOW_INJECT);
        assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD);
        assert_false(swalk(h, root, rsvd_va[i]).present);
        uint32_t pfec;
        assert_int_equal(mv_shadow_gva_to_gpa(v, rsvd_va[i], 0, 0, &gpa, &pfec), MV_EFAULT);
        assert_int_equal(pfec, MV_PFEC_P | MV_PFEC_RSVD);
    }
    /* A table that is no RAM reads as all ones: reserved too (at L2, L3). */
    uint32_t code;
    assert_int_equal(shd_fault(v, 4ull << 21, 0, &code, NULL), MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD);
    assert_int_equal(shd_fault(v, 1ull << 30, MV_PFEC_U, &code, NULL), MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD | MV_PFEC_U);
    /* With NXE a fetch reports I/D. */
    shd_mode(v, true, false);
    assert_int_equal(shd_fault(v, VA_BASE + 3 * 4096, MV_PFEC_ID, &code, NULL), MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD | MV_PFEC_ID);
    shd_mode(v, false, false);

    struct mv_shadow_stats st1 = shd_stats(d);
    assert_int_equal(st1.faults[MV_SHADOW_MMIO] - st0.faults[MV_SHADOW_MMIO], 3);
    assert_int_equal(st1.faults[MV_SHADOW_INJECT] - st0.faults[MV_SHADOW_INJECT], 5 * 2 + 3);
    assert_int_equal(st1.faults[MV_SHADOW_FIXED], st0.faults[MV_SHADOW_FIXED]);

    /* The rest of the tree is fine and exact. */
    struct mv_vcpu_state vs = shd_state(v);
    for (unsigned i = 5; i < 64; i++)
        shd_exact(h, v, root, cr3, VA_BASE + i * 4096);
    /* An entry that becomes hostile after it was shadowed loses its shadow at once. */
    shd_exact(h, v, root, cr3, VA_BASE);
    assert_true(swalk(h, root, VA_BASE).present);
    emw(v, G_L1, 0, (1ull << 40) | (16ull << 12) | TABLE | PTE_A);
    assert_false(swalk(h, root, VA_BASE).present);
    shd_exact(h, v, root, cr3, VA_BASE);
    emw(v, G_L1, 0, (4500ull << 12) | TABLE | PTE_A);
    assert_false(swalk(h, root, VA_BASE).present);
    shd_exact(h, v, root, cr3, VA_BASE);
    emw(v, G_L1, 0, (16ull << 12) | TABLE | PTE_A);
    assert_true(shd_agrees(h, d, root, cr3, VA_BASE, &vs));
    /* Emulated writes to no RAM, or beyond the width, are refused. */
    uint64_t x = 0;
    assert_int_equal(mv_shadow_emulate_write(v, 5000ull << 12, &x, 8), MV_EFAULT);
    assert_int_equal(mv_shadow_emulate_write(v, 1ull << 40, &x, 8), MV_EFAULT);
    assert_int_equal(mv_shadow_emulate_write(v, ~0ull & ~0xfffull, &x, 8), MV_EFAULT);
    th_assert_audit_clean(h);

    /* A narrower guest (36 bits): bit 36 is reserved, bit 35 only beyond RAM. */
    mv_domain_t *n = tree_dom(2, 1, 36);
    mv_vcpu_t *nv = mv_domain_vcpu(n, 0);
    gpoke(n, G_L1, 1, (1ull << 36) | TABLE);
    gpoke(n, G_L1, 2, (1ull << 35) | TABLE);
    mv_paddr_t nroot;
    assert_int_equal(mv_shadow_set_cr3(nv, (1ull << 36) | (G_L4 << 12), &nroot), MV_EINVAL);
    nroot = shd_cr3(nv, G_L4);
    assert_int_equal(shd_fault(nv, VA_BASE + 4096, 0, &code, NULL), MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD);
    assert_int_equal(shd_fault(nv, VA_BASE + 2 * 4096, 0, NULL, &gpa), MV_SHADOW_MMIO);
    assert_int_equal(gpa, 1ull << 35);
    shd_exact(h, nv, nroot, G_L4 << 12, VA_BASE);
    shd_kill(h, n);
    shd_kill(h, d);
}

/* ---- Reserved bits at each level -------------------------------------------------------- */

/* The entry on VA_BASE's path at each level, as build_tree writes it. */
static const struct {
    mv_gfn_t table;
    unsigned idx;
    uint64_t good;
} path_entry[4] = {
    {G_L1, 0, (16ull << 12) | TABLE | PTE_A},
    {G_L2, 2, (G_L1 << 12) | TABLE | PTE_A},
    {G_L3, 0, (G_L2 << 12) | TABLE | PTE_A},
    {G_L4, 0, (G_L3 << 12) | TABLE | PTE_A},
};

/*
 * Put `val` at level lv of VA_BASE's path (an emulated write, the shadows exist), check
 * the outcome of accesses, put the good entry back and check the path works again.
 */
static void rsvd_case(mv_domain_t *d, mv_vcpu_t *v, mv_paddr_t root, unsigned lv,
                      uint64_t val, bool nxe, bool gb, bool reserved)
{
    uint64_t cr3 = G_L4 << 12;
    shd_mode(v, nxe, gb);
    assert_int_equal(mv_shadow_blow(d), 0); /* no shadow built in another mode */
    shd_exact(h, v, root, cr3, VA_BASE);
    assert_true(swalk(h, root, VA_BASE).present);
    emw(v, path_entry[lv].table, path_entry[lv].idx, val);
    uint32_t code;
    if (reserved) {
        /* Revalidation dropped the shadow before any access. */
        assert_false(swalk(h, root, VA_BASE).present);
        assert_int_equal(shd_fault(v, VA_BASE, MV_PFEC_W | MV_PFEC_U, &code, NULL),
                         MV_SHADOW_INJECT);
        assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD | MV_PFEC_W | MV_PFEC_U);
        assert_int_equal(shd_fault(v, VA_BASE, MV_PFEC_ID, &code, NULL), MV_SHADOW_INJECT);
        assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD | (nxe ? MV_PFEC_ID : 0));
        assert_false(swalk(h, root, VA_BASE).present);
    } else {
        shd_exact(h, v, root, cr3, VA_BASE);
        struct sw s = swalk(h, root, VA_BASE);
        assert_true(s.present);
        /* Bits the hardware ignores (52-62) never reach a shadow entry. */
        assert_int_equal(s.bits & 0x7ff0000000000000ull, 0);
        if (nxe && (val & PTE_NX)) {
            assert_true(s.nx);
            assert_int_equal(shd_fault(v, VA_BASE, MV_PFEC_ID, &code, NULL), MV_SHADOW_INJECT);
            assert_int_equal(code, MV_PFEC_P | MV_PFEC_ID);
        }
    }
    th_assert_audit_clean(h);
    emw(v, path_entry[lv].table, path_entry[lv].idx, path_entry[lv].good);
    shd_exact(h, v, root, cr3, VA_BASE);
    assert_true(swalk(h, root, VA_BASE).present);
    shd_mode(v, false, false);
    assert_int_equal(mv_shadow_blow(d), 0);
}

static void test_reserved_bits(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(3, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    for (unsigned lv = 0; lv < 4; lv++)
        gpoke(d, path_entry[lv].table, path_entry[lv].idx, path_entry[lv].good);
    mv_paddr_t root = shd_cr3(v, G_L4);
    for (unsigned lv = 0; lv < 4; lv++) {
        uint64_t g = path_entry[lv].good;
        rsvd_case(d, v, root, lv, g | (1ull << 40), false, false, true); /* MAXPHYADDR */
        rsvd_case(d, v, root, lv, g | (1ull << 51), false, false, true);
        rsvd_case(d, v, root, lv, g | (1ull << 40), true, true, true);
        rsvd_case(d, v, root, lv, g | PTE_NX, false, false, true); /* NX without NXE */
        rsvd_case(d, v, root, lv, g | PTE_NX, true, false, false);
        /* Ignored bits: no fault, and nothing of them in the shadow. */
        rsvd_case(d, v, root, lv, g | 0x7ff0000000000000ull, false, false, false);
    }
    /* PS at L4: reserved, 1 GiB pages or not. */
    rsvd_case(d, v, root, 3, path_entry[3].good | PTE_PS, false, false, true);
    rsvd_case(d, v, root, 3, path_entry[3].good | PTE_PS, false, true, true);
    /* A 1 GiB leaf at L3: reserved without the feature; with it, aligned, fine. */
    uint64_t gig = TABLE | PTE_A | PTE_PS;
    rsvd_case(d, v, root, 2, gig, false, false, true);
    rsvd_case(d, v, root, 2, gig, false, true, false);
    rsvd_case(d, v, root, 2, gig | (1ull << 13), false, true, true); /* misaligned */
    rsvd_case(d, v, root, 2, gig | (1ull << 29), false, true, true);
    rsvd_case(d, v, root, 2, gig | (1ull << 12), false, true, false); /* PAT */
    /* A 2 MiB leaf at L2: bits 13-20 reserved, bit 12 is PAT. */
    uint64_t two = (512ull << 12) | TABLE | PTE_A | PTE_PS;
    rsvd_case(d, v, root, 1, two, false, false, false);
    rsvd_case(d, v, root, 1, two | (1ull << 13), false, false, true);
    rsvd_case(d, v, root, 1, two | (1ull << 20), false, false, true);
    rsvd_case(d, v, root, 1, two | (1ull << 12), false, false, false);
    /* PAT (bit 7) of a 4 KiB leaf is no PS and no reserved bit. */
    rsvd_case(d, v, root, 0, path_entry[0].good | PTE_PS, false, false, false);
    shd_kill(h, d);
}

/* ---- Self-maps ------------------------------------------------------------------------- */

/* No shadow leaf anywhere maps writable a guest page-table frame that is in sync. */
static void assert_tables_read_only(mv_domain_t *d, mv_paddr_t root, const uint64_t *vas,
                                    unsigned n)
{
    struct sh_domain *s = sh_of(d);
    for (unsigned i = 0; i < n; i++) {
        struct sw w = swalk(h, root, vas[i]);
        if (!w.present || !w.w)
            continue;
        for (mv_gfn_t g = 0; g < 256; g++)
            if (mv__sh_gfn_protected(s, g)) /* a table not out of sync */
                assert_true(shd_mfn(d, g) != w.mfn);
    }
    th_assert_audit_clean(h);
}

static void test_self_map_l4(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(4, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    gpoke(d, G_L4, 511, (G_L4 << 12) | TABLE); /* the recursive slot */
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    const uint64_t rec_l1 = shd_va(511, 0, 0, 2);       /* -> G_L1 */
    const uint64_t rec_l2 = shd_va(511, 511, 0, 0);     /* -> G_L2 */
    const uint64_t rec_l3 = shd_va(511, 511, 511, 0);   /* -> G_L3 */
    const uint64_t rec_l4 = shd_va(511, 511, 511, 511); /* -> G_L4 itself */
    const uint64_t vas[] = {rec_l1, rec_l2, rec_l3, rec_l4, VA_BASE, VA_BASE + 7 * 4096,
                            VA_B, shd_va(511, 0, 0, 3)};
    const unsigned nv = sizeof(vas) / sizeof(vas[0]);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    assert_int_equal(swalk(h, root, rec_l1).mfn, shd_mfn(d, G_L1));
    assert_int_equal(swalk(h, root, rec_l2).mfn, shd_mfn(d, G_L2));
    assert_int_equal(swalk(h, root, rec_l3).mfn, shd_mfn(d, G_L3));
    assert_int_equal(swalk(h, root, rec_l4).mfn, shd_mfn(d, G_L4));
    /* The L4 frame is shadowed at all four levels at once. */
    struct sh_domain *s = sh_of(d);
    for (unsigned t = SH_L1; t <= SH_L4; t++)
        assert_int_not_equal(mv__sh_lookup(s, G_L4, t), SH_NIL);
    assert_tables_read_only(d, root, vas, nv);

    /* Writes through the self-map trap; the emulator's walk names the table entry. */
    mv_paddr_t gpa;
    uint32_t pfec;
    for (unsigned i = 0; i < 4; i++) {
        assert_int_equal(shd_fault(v, vas[i] + 0x38, MV_PFEC_W | MV_PFEC_P, NULL, &gpa),
                         MV_SHADOW_EMULATE);
        assert_false(swalk(h, root, vas[i]).w);
    }
    assert_int_equal(mv_shadow_gva_to_gpa(v, rec_l1 + 7 * 8, MV_PFEC_W, 0, &gpa, &pfec), 0);
    assert_int_equal(gpa, (G_L1 << 12) + 7 * 8);
    uint64_t e = (100ull << 12) | TABLE | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), 0);
    shd_exact(h, v, root, cr3, VA_BASE + 7 * 4096);
    assert_int_equal(swalk(h, root, VA_BASE + 7 * 4096).mfn, shd_mfn(d, 100));

    /* The recursive entry rewritten through itself: read-only, then gone, then back. */
    assert_int_equal(mv_shadow_gva_to_gpa(v, rec_l4 + 511 * 8, MV_PFEC_W, 0, &gpa, &pfec), 0);
    assert_int_equal(gpa, (G_L4 << 12) + 511 * 8);
    e = (G_L4 << 12) | PTE_P | PTE_U | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), 0);
    struct mv_vcpu_state vs = shd_state(v);
    for (unsigned i = 0; i < nv; i++)
        shd_agrees(h, d, root, cr3, vas[i], &vs); /* exact before any fault */
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    /* Now read-only at the top: a write through it is the guest's #PF. */
    uint32_t code;
    assert_int_equal(shd_fault(v, rec_l1, MV_PFEC_W | MV_PFEC_P, &code, NULL), MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_W);
    uint64_t exp = e, want = 0;
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, gpa, &exp, want, 8), 0);
    for (unsigned i = 0; i < 4; i++) {
        assert_false(swalk(h, root, vas[i]).present);
        assert_int_equal(shd_fault(v, vas[i], 0, &code, NULL), MV_SHADOW_INJECT);
        assert_int_equal(code, 0);
    }
    th_assert_audit_clean(h);
    e = (G_L4 << 12) | TABLE | PTE_A;
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), 0);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    assert_tables_read_only(d, root, vas, nv);

    /* The whole tree unlinked and relinked through the self-map (L4[0]). */
    assert_int_equal(mv_shadow_gva_to_gpa(v, rec_l4, MV_PFEC_W, 0, &gpa, &pfec), 0);
    assert_int_equal(gpa, G_L4 << 12);
    e = 0;
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), 0);
    assert_false(swalk(h, root, VA_BASE).present);
    assert_false(swalk(h, root, rec_l1).present); /* rec_l1 went through L4[0] too */
    assert_true(swalk(h, root, rec_l4).present);
    e = (G_L3 << 12) | TABLE | PTE_A;
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), 0);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    assert_tables_read_only(d, root, vas, nv);
    shd_kill(h, d);
}

static void test_self_map_two_levels(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(5, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    /* G_L2[5] -> G_L2: for va in 5 << 21 the frame is L2 and L1 at once. */
    gpoke(d, G_L2, 5, (G_L2 << 12) | TABLE);
    /* G_L2[7]: an L1 table (gfn 200) at L2, a data page (gfn 200) at L1. */
    gpoke(d, G_L2, 7, (200ull << 12) | TABLE);
    gpoke(d, 200, 0, (201ull << 12) | TABLE);
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    const uint64_t va_l1 = (5ull << 21) + (2 << 12);   /* G_L2[2] as a leaf: G_L1 */
    const uint64_t va_self = (5ull << 21) + (5 << 12); /* G_L2[5] as a leaf: G_L2 */
    const uint64_t va_200 = (5ull << 21) + (7 << 12);  /* G_L2[7] as a leaf: gfn 200 */
    const uint64_t va_201 = 7ull << 21;                /* through gfn 200 as L1: gfn 201 */
    const uint64_t va_6 = (5ull << 21) + (6 << 12), va_6t = 6ull << 21;
    const uint64_t vas[] = {va_l1, va_self, va_200, va_201, va_6, va_6t, VA_BASE, VA_B};
    const unsigned nv = sizeof(vas) / sizeof(vas[0]);

    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    struct sh_domain *s = sh_of(d);
    assert_int_not_equal(mv__sh_lookup(s, G_L2, SH_L2), SH_NIL);
    assert_int_not_equal(mv__sh_lookup(s, G_L2, SH_L1), SH_NIL);
    assert_int_equal(swalk(h, root, va_self).mfn, shd_mfn(d, G_L2));
    assert_false(swalk(h, root, va_self).w);
    assert_false(swalk(h, root, va_l1).w);
    assert_int_equal(shd_fault(v, va_self, MV_PFEC_W | MV_PFEC_P, NULL, NULL), MV_SHADOW_EMULATE);
    /* gfn 200 is a table now (shadowed through va_201): its data mapping is read-only. */
    assert_int_not_equal(mv__sh_lookup(s, 200, SH_L1), SH_NIL);
    assert_int_equal(shd_fault(v, va_200, MV_PFEC_W, NULL, NULL), MV_SHADOW_EMULATE);
    assert_false(swalk(h, root, va_200).w);
    assert_tables_read_only(d, root, vas, nv);

    /* (1) G_L2[7] rewritten: both shadows of G_L2 follow before any fault. */
    struct mv_vcpu_state vs = shd_state(v);
    emw(v, G_L2, 7, (202ull << 12) | TABLE | PTE_A);
    assert_true(shd_agrees(h, d, root, cr3, va_200, &vs)); /* leaf to gfn 202, RO (no D) */
    assert_int_equal(swalk(h, root, va_200).mfn, shd_mfn(d, 202));
    assert_false(swalk(h, root, va_201).present);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    uint32_t code;
    assert_int_equal(shd_fault(v, va_201, 0, &code, NULL), MV_SHADOW_INJECT); /* 202 is empty */
    assert_int_equal(code, 0);

    /* (2) An unaligned 8-byte write over G_L2[6] (high half) and G_L2[7] (low half). */
    gpoke(d, 203, 0, (204ull << 12) | TABLE); /* 203 is no table yet: a plain write */
    uint64_t e6 = (206ull << 12) | TABLE | PTE_A, e7 = (203ull << 12) | TABLE | PTE_A | PTE_D;
    emw(v, G_L2, 6, e6);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    uint8_t two[16];
    uint64_t n6 = e6 | (1ull << 45), n7 = e7; /* 6 gains a reserved bit */
    memcpy(two, &n6, 8);
    memcpy(two + 8, &n7, 8);
    uint64_t before7 = gget(d, G_L2, 7);
    memcpy(two + 8 + 4, (uint8_t *)&before7 + 4, 4); /* 7's high half as it was */
    assert_int_equal(mv_shadow_emulate_write(v, (G_L2 << 12) + 6 * 8 + 4, two + 4, 8), 0);
    assert_int_equal(gget(d, G_L2, 6), n6);
    assert_int_equal(gget(d, G_L2, 7), (before7 & ~0xffffffffull) | (e7 & 0xffffffffull));
    assert_false(swalk(h, root, va_6).present);
    assert_false(swalk(h, root, va_6t).present);
    assert_true(shd_agrees(h, d, root, cr3, va_200, &vs) ||
                !swalk(h, root, va_200).present);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    assert_int_equal(swalk(h, root, va_201).mfn, shd_mfn(d, 204));
    /* 203 became a table through va_201: its leaf at L1 level is read-only. */
    assert_false(swalk(h, root, va_200).w);
    assert_tables_read_only(d, root, vas, nv);

    /* (3) A 16-byte write over [4] and [5]: the self entry becomes read-only, user. */
    uint64_t pair[2] = {0, (G_L2 << 12) | PTE_P | PTE_U | PTE_A};
    assert_int_equal(mv_shadow_emulate_write(v, (G_L2 << 12) + 4 * 8, pair, 16), 0);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    assert_int_equal(shd_fault(v, va_l1, MV_PFEC_W | MV_PFEC_U | MV_PFEC_P, &code, NULL),
                     MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_W | MV_PFEC_U);

    /* (4) The self entry removed: nothing of the 5 << 21 range stays. */
    emw(v, G_L2, 5, 0);
    for (unsigned i = 0; i < 3; i++)
        assert_false(swalk(h, root, vas[i]).present);
    for (unsigned i = 0; i < nv; i++)
        shd_exact(h, v, root, cr3, vas[i]);
    assert_tables_read_only(d, root, vas, nv);
    shd_kill(h, d);
}

/* ---- Wide and unaligned emulated writes (XSA-477) ------------------------------------- */

/* Entry i of the rewritten table: eight kinds, so every kind lands at many offsets. */
static uint64_t wide_entry(unsigned i, mv_gfn_t base)
{
    uint64_t g = (base + i) << 12;
    switch (i % 8) {
    case 0: return 0;                                      /* not present */
    case 1: return g | PTE_P | PTE_U | PTE_A;               /* read-only */
    case 2: return g | TABLE;                               /* no A: not shadowed */
    case 3: return g | TABLE | PTE_A | (1ull << 44);        /* reserved */
    case 4: return (G_L2 << 12) | TABLE | PTE_A | PTE_D;    /* a table: read-only */
    case 5: return ((6000ull + i) << 12) | TABLE | PTE_A;   /* no RAM */
    case 6: return g | TABLE | PTE_A | PTE_NX;              /* NX without NXE: reserved */
    default: return g | TABLE | PTE_A | PTE_D;              /* writable */
    }
}

/* Every entry of G_L1 as the hardware sees it, with no fault taken. */
static void check_l1_now(mv_domain_t *d, mv_paddr_t root, struct mv_vcpu_state *vs)
{
    for (unsigned i = 0; i < 512; i++) {
        uint64_t va = VA_BASE + (uint64_t)i * 4096;
        uint64_t g = gget(d, G_L1, i);
        bool present = shd_agrees(h, d, root, G_L4 << 12, va, vs);
        if (!(g & PTE_P) || !(g & PTE_A) || (g & ((0xfffull << 40) | PTE_NX)))
            assert_false(present);
    }
}

static void test_wide_writes(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(6, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    for (unsigned i = 0; i < 512; i++)
        gpoke(d, G_L1, i, ((1024ull + i) << 12) | TABLE);
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    for (unsigned i = 0; i < 512; i++)
        assert_int_equal(shd_fault(v, VA_BASE + i * 4096ull, MV_PFEC_W, NULL, NULL),
                         MV_SHADOW_FIXED);
    for (unsigned i = 0; i < 512; i++)
        assert_true(swalk(h, root, VA_BASE + i * 4096ull).w);
    struct mv_vcpu_state vs = shd_state(v);
    uint64_t writes = shd_stats(d).emulated_writes;

    /* 16 bytes: entries 0 and 1, both followed; 2 untouched. */
    uint64_t two[2] = {(2000ull << 12) | TABLE | PTE_A | PTE_D, (2001ull << 12) | TABLE | PTE_A};
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, two, 16), 0);
    assert_int_equal(swalk(h, root, VA_BASE).mfn, shd_mfn(d, 2000));
    assert_true(swalk(h, root, VA_BASE).w);
    assert_int_equal(swalk(h, root, VA_BASE + 4096).mfn, shd_mfn(d, 2001));
    assert_false(swalk(h, root, VA_BASE + 4096).w);
    assert_int_equal(swalk(h, root, VA_BASE + 2 * 4096).mfn, shd_mfn(d, 1026));
    check_l1_now(d, root, &vs);

    /* 64 bytes: entries 8..15, eight kinds. */
    uint64_t eight[8];
    for (unsigned i = 0; i < 8; i++)
        eight[i] = wide_entry(8 + i, 2100);
    assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + 64, eight, 64), 0);
    check_l1_now(d, root, &vs);
    for (unsigned i = 8; i < 16; i++) {
        struct sw s = swalk(h, root, VA_BASE + i * 4096ull);
        switch (i % 8) {
        case 1: assert_true(s.present && !s.w); break;
        case 4: assert_true(s.present && !s.w); assert_int_equal(s.mfn, shd_mfn(d, G_L2)); break;
        case 7: assert_true(s.present && s.w); assert_int_equal(s.mfn, shd_mfn(d, 2115)); break;
        default: assert_false(s.present); break;
        }
    }

    /* A whole page: all 512 entries revalidated, none left pointing at the old frames. */
    static uint64_t page[512];
    for (unsigned i = 0; i < 512; i++)
        page[i] = wide_entry(i, 3000);
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, page, 4096), 0);
    check_l1_now(d, root, &vs);
    for (unsigned i = 0; i < 512; i++) {
        struct sw s = swalk(h, root, VA_BASE + i * 4096ull);
        if (s.present)
            assert_true(s.mfn == shd_mfn(d, 3000 + i) || s.mfn == shd_mfn(d, G_L2));
        shd_exact(h, v, root, cr3, VA_BASE + i * 4096ull);
    }
    th_assert_audit_clean(h);

    /* Unaligned 8-byte writes straddling entries k and k + 1 (the last pair included). */
    for (unsigned i = 0; i < 512; i++)
        page[i] = ((1024ull + i) << 12) | TABLE | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, page, 4096), 0);
    for (unsigned i = 0; i < 512; i++)
        assert_int_equal(shd_fault(v, VA_BASE + i * 4096ull, MV_PFEC_W, NULL, NULL),
                         MV_SHADOW_FIXED);
    const unsigned ks[] = {0, 31, 100, 255, 510};
    for (unsigned j = 0; j < sizeof(ks) / sizeof(ks[0]); j++) {
        unsigned k = ks[j];
        uint64_t nk = page[k] | (1ull << 41);                           /* reserved */
        uint64_t nk1 = ((3100ull + k) << 12) | TABLE | PTE_A | PTE_D; /* moved */
        uint8_t buf[8];
        memcpy(buf, (uint8_t *)&nk + 4, 4);
        memcpy(buf + 4, &nk1, 4);
        assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + 8 * k + 4, buf, 8), 0);
        assert_int_equal(gget(d, G_L1, k), nk);
        assert_int_equal(gget(d, G_L1, k + 1), nk1);
        assert_false(swalk(h, root, VA_BASE + k * 4096ull).present);
        struct sw s = swalk(h, root, VA_BASE + (k + 1) * 4096ull);
        assert_true(s.present && s.w);
        assert_int_equal(s.mfn, shd_mfn(d, 3100 + k));
    }
    check_l1_now(d, root, &vs);
    /* 1 and 2 bytes: P cleared in entry 20, NX set in entry 21 (reserved without NXE). */
    uint8_t b = (uint8_t)(page[20] & ~PTE_P);
    assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + 8 * 20, &b, 1), 0);
    uint16_t hi = 0x8000;
    assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + 8 * 21 + 6, &hi, 2), 0);
    assert_false(swalk(h, root, VA_BASE + 20 * 4096).present);
    assert_false(swalk(h, root, VA_BASE + 21 * 4096).present);
    /* cmpxchg of a high half: a wrong guess changes nothing, the right one does. */
    uint64_t exp = 5;
    uint64_t before = gget(d, G_L1, 30);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 8 * 30 + 4, &exp, 0x10, 4),
                     MV_EAGAIN);
    assert_int_equal(exp, before >> 32);
    assert_true(swalk(h, root, VA_BASE + 30 * 4096).present);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 8 * 30 + 4, &exp, 0x10, 4), 0);
    assert_false(swalk(h, root, VA_BASE + 30 * 4096).present); /* bit 36: beyond RAM only */
    shd_exact(h, v, root, cr3, VA_BASE + 30 * 4096);
    check_l1_now(d, root, &vs);

    /* An upper table zeroed in one write, then restored in one write. */
    static uint64_t l2[512], zero[512];
    assert_int_equal(mv_guest_phys_read(d, G_L2 << 12, l2, 4096), 0);
    assert_int_equal(mv_shadow_emulate_write(v, G_L2 << 12, zero, 4096), 0);
    for (unsigned i = 0; i < 512; i++)
        assert_false(swalk(h, root, VA_BASE + i * 4096ull).present);
    assert_false(swalk(h, root, VA_B).present);
    assert_int_equal(mv_shadow_emulate_write(v, G_L2 << 12, l2, 4096), 0);
    for (unsigned i = 0; i < 512; i += 7)
        shd_exact(h, v, root, cr3, VA_BASE + i * 4096ull);
    shd_exact(h, v, root, cr3, VA_B);

    struct mv_shadow_stats st = shd_stats(d);
    assert_int_equal(st.emulated_writes - writes, 3 + 1 + 5 + 2 + 1 + 2);
    shd_kill(h, d);
}

/* ---- Page-crossing writes ---------------------------------------------------------------- */

static void test_page_crossing(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(7, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    gpoke(d, G_L1, 511, (500ull << 12) | TABLE);
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    assert_int_equal(shd_fault(v, VA_BASE + 511 * 4096ull, MV_PFEC_W, NULL, NULL),
                     MV_SHADOW_FIXED);
    for (unsigned i = 0; i < 64; i++) {
        assert_int_equal(shd_fault(v, VA_BASE + i * 4096ull, MV_PFEC_W, NULL, NULL),
                         MV_SHADOW_FIXED);
        assert_int_equal(shd_fault(v, VA_B + i * 4096ull, MV_PFEC_W, NULL, NULL),
                         MV_SHADOW_FIXED);
    }
    struct sh_domain *s = sh_of(d);
    uint32_t p1 = mv__sh_lookup(s, G_L1, SH_L1), p2 = mv__sh_lookup(s, G_L1B, SH_L1);
    assert_int_not_equal(p1, SH_NIL);
    assert_int_not_equal(p2, SH_NIL);
    /* The state a refused write must leave alone. */
    static uint8_t mem0[8192], mem1[8192], sh0[2][4096], sh1[2][4096];
    assert_int_equal(mv_guest_phys_read(d, G_L1 << 12, mem0, 8192), 0);
    memcpy(sh0[0], sh_table(s, &s->pages[p1]), 4096);
    memcpy(sh0[1], sh_table(s, &s->pages[p2]), 4096);
    struct mv_shadow_stats st0 = shd_stats(d);

    static uint8_t junk[8192];
    memset(junk, 0xff, sizeof(junk));
    const struct {
        uint64_t off;
        size_t len;
    } bad[] = {{4095, 2}, {4092, 8}, {4088, 16}, {4064, 64}, {4095, 4096}, {1, 4096},
               {0, 4097}, {0, 8192}, {4096 - 8, 9}, {0, 0}};
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + bad[i].off, junk, bad[i].len),
                         MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, NULL, 8), MV_EINVAL);
    uint64_t exp = 0;
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 4092, &exp, 1, 8), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 4, &exp, 1, 8), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 4095, &exp, 1, 2), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, G_L1 << 12, &exp, 1, 3), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, G_L1 << 12, &exp, 1, 16), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, G_L1 << 12, &exp, 1ull << 32, 4), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, G_L1 << 12, NULL, 1, 8), MV_EINVAL);

    assert_int_equal(mv_guest_phys_read(d, G_L1 << 12, mem1, 8192), 0);
    assert_memory_equal(mem0, mem1, 8192);
    memcpy(sh1[0], sh_table(s, &s->pages[p1]), 4096);
    memcpy(sh1[1], sh_table(s, &s->pages[p2]), 4096);
    assert_memory_equal(sh0, sh1, sizeof(sh0));
    struct mv_shadow_stats st1 = shd_stats(d);
    assert_memory_equal(&st0, &st1, sizeof(st0));
    th_assert_audit_clean(h);

    /* Split by the caller as the hardware would, each half lands and is revalidated: the
     * high half of G_L1[511] (bit 44 set: reserved) and the low half of G_L1B[0] (moved). */
    uint32_t hi511 = 1u << 12;
    uint32_t lo0 = (uint32_t)((81ull << 12) | TABLE | PTE_A | PTE_D);
    assert_true(swalk(h, root, VA_BASE + 511 * 4096ull).present);
    assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + 4092, &hi511, 4), 0);
    assert_int_equal(mv_shadow_emulate_write(v, G_L1B << 12, &lo0, 4), 0);
    assert_int_equal(gget(d, G_L1, 511) >> 32, hi511);
    assert_false(swalk(h, root, VA_BASE + 511 * 4096ull).present);
    struct sw s0 = swalk(h, root, VA_B);
    assert_true(s0.present && s0.w);
    assert_int_equal(s0.mfn, shd_mfn(d, 81));
    shd_exact(h, v, root, cr3, VA_B);
    shd_exact(h, v, root, cr3, VA_BASE + 511 * 4096ull);
    assert_int_equal(shd_stats(d).emulated_writes, st0.emulated_writes + 2);
    shd_kill(h, d);
}

/* ---- The target removed between the fault and the write (XSA-219) ----------------- */

static void test_target_removed(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(8, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    gpoke(d, G_L1B, 0, (G_L1 << 12) | TABLE); /* the L1 table, mapped as data at VA_B */
    gpoke(d, G_L1B, 1, (90ull << 12) | PTE_P | PTE_U); /* a read-only data page */
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    shd_exact(h, v, root, cr3, VA_BASE);
    shd_exact(h, v, root, cr3, VA_B);
    mv_paddr_t gpa;
    assert_int_equal(shd_fault(v, VA_B + 0x28, MV_PFEC_W | MV_PFEC_P, NULL, &gpa),
                     MV_SHADOW_EMULATE);
    assert_int_equal(gpa, (G_L1 << 12) + 0x28);
    struct mv_shadow_stats st0 = shd_stats(d);
    assert_int_equal(st0.shadows[SH_L1], 2);

    /* The balloon takes the table's gfn before the emulator writes. */
    shd_decrease(d, G_L1);
    struct mv_domain_stats ds0 = {.size = sizeof(ds0)};
    assert_int_equal(mv_domain_stats(d, &ds0), 0);
    struct mv_shadow_stats st1 = shd_stats(d);
    assert_int_equal(st1.shadows[SH_L1], 1);      /* its shadow went with it */
    assert_false(swalk(h, root, VA_B).present);   /* the leaf that mapped it was zapped */
    assert_false(swalk(h, root, VA_BASE).present);
    uint64_t e = (60ull << 12) | TABLE | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), MV_EFAULT);
    uint64_t exp = 0;
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, gpa, &exp, e, 8), MV_EFAULT);
    /* Nothing changed: still a hole, no page came back, no write counted. */
    assert_int_equal(shd_p2m(d, G_L1).type, MV_P2M_INVALID);
    struct mv_domain_stats ds1 = {.size = sizeof(ds1)};
    assert_int_equal(mv_domain_stats(d, &ds1), 0);
    assert_int_equal(ds1.pages, ds0.pages);
    struct mv_shadow_stats st2 = shd_stats(d);
    assert_int_equal(st2.emulated_writes, st1.emulated_writes);
    assert_int_equal(st2.shadows[SH_L1], 1);
    /* The guest sees a table with nothing behind it, and a leaf onto a hole. */
    uint32_t code;
    assert_int_equal(shd_fault(v, VA_BASE, 0, &code, NULL), MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD);
    assert_int_equal(shd_fault(v, VA_B, 0, NULL, NULL), MV_SHADOW_MMIO);
    th_assert_audit_clean(h);

    /* A data page: a supervisor write with CR0.WP clear to a read-only page is emulated. */
    struct mv_vcpu_state vs = shd_state(v);
    vs.cr0 &= ~MV_CR0_WP;
    assert_int_equal(mv_vcpu_set_state(v, &vs), 0);
    assert_int_equal(shd_fault(v, VA_B + 4096 + 8, MV_PFEC_W, NULL, &gpa), MV_SHADOW_EMULATE);
    assert_int_equal(gpa, (90ull << 12) + 8);
    shd_decrease(d, 90);
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), MV_EFAULT);
    assert_int_equal(shd_p2m(d, 90).type, MV_P2M_INVALID);
    /* Retyped read-only meanwhile: refused, memory as it was. */
    shd_populate(d, 90);
    uint64_t done, was = 0x1234;
    assert_int_equal(mv_guest_phys_write(d, (90ull << 12) + 8, &was, 8), 0);
    assert_int_equal(mv_p2m_change_type_range(d, 90, 1, MV_P2M_RAM_RW, MV_P2M_RAM_RO, &done), 0);
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), MV_EACCES);
    assert_int_equal(gget(d, 90, 1), was);
    assert_int_equal(mv_p2m_change_type_range(d, 90, 1, MV_P2M_RAM_RO, MV_P2M_RAM_RW, &done), 0);
    /* Repopulated: the address is RAM again, the write lands in the new frame. */
    assert_int_equal(mv_shadow_emulate_write(v, gpa, &e, 8), 0);
    assert_int_equal(gget(d, 90, 1), e);
    assert_int_equal(shd_stats(d).emulated_writes, st2.emulated_writes + 1);
    shd_kill(h, d);
}

/* ---- Pool exhaustion with log-dirty on (XSA-427) ------------------------------------- */

#define LD_TABLES 64u   /* L1 tables at gfns 100.., each mapping LD_PAGES data pages */
#define LD_PAGES 8u
#define LD_DATA 1000ull /* data gfns */

static uint64_t ld_va(unsigned t, unsigned i) { return ((uint64_t)t << 21) + ((uint64_t)i << 12); }

static void test_pool_exhaustion_logdirty(void **state)
{
    (void)state;
    mv_domain_t *d = shd_domain(h, 9, 2, 2 * MV_SHADOW_FLOOR_PER_VCPU, RAM_PAGES, 0, 0);
    gpoke(d, G_L4, 0, (G_L3 << 12) | TABLE);
    gpoke(d, G_L3, 0, (G_L2 << 12) | TABLE);
    for (unsigned t = 0; t < LD_TABLES; t++) {
        gpoke(d, G_L2, t, ((100ull + t) << 12) | TABLE);
        for (unsigned i = 0; i < LD_PAGES; i++)
            gpoke(d, 100 + t, i, ((LD_DATA + LD_PAGES * t + i) << 12) | TABLE);
    }
    mv_vcpu_t *v[2] = {mv_domain_vcpu(d, 0), mv_domain_vcpu(d, 1)};
    mv_paddr_t root[2] = {shd_cr3(v[0], G_L4), shd_cr3(v[1], G_L4)};
    assert_int_equal(root[0], root[1]);
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    static uint64_t bm[RAM_PAGES / 64], snap[RAM_PAGES];
    uint64_t done, dirty;
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, RAM_PAGES, bm, RAM_PAGES, &done, &dirty), 0);
    for (mv_gfn_t g = 0; g < RAM_PAGES; g++)
        assert_int_equal(mv_guest_phys_read(d, g << 12, &snap[g], 8), 0);

    struct th_rng rng = {.s = 427};
    uint64_t stamp = 1;
    for (unsigned round = 0; round < 8; round++) {
        static bool written[RAM_PAGES];
        memset(written, 0, sizeof(written));
        for (unsigned k = 0; k < 300; k++) {
            unsigned t = (unsigned)th_rand_below(&rng, LD_TABLES);
            unsigned i = (unsigned)th_rand_below(&rng, LD_PAGES), c = k & 1;
            if (th_rand_below(&rng, 8) == 0) {
                /* The guest kernel harvests a dirty bit: an emulated PTE write. */
                uint64_t e = gget(d, 100 + t, i) & ~PTE_D;
                assert_int_equal(mv_shadow_emulate_write(v[c], ((100ull + t) << 12) + 8 * i, &e,
                                                         8), 0);
                written[100 + t] = true;
                continue;
            }
            mv_gfn_t g = LD_DATA + LD_PAGES * t + i;
            if (th_rand_below(&rng, 4) == 0) {
                /* A read: whatever leaf it builds must not let a later write pass unseen. */
                uint64_t va = ld_va(t, i);
                if (!swalk(h, root[c], va).present)
                    assert_int_equal(shd_fault(v[c], va, 0, NULL, NULL), MV_SHADOW_FIXED);
                assert_int_equal(swalk(h, root[c], va).mfn, shd_mfn(d, g));
                continue;
            }
            uint64_t val = stamp++ << 8 | round;
            hw_write(v[c], root[c], ld_va(t, i), val);
            written[g] = true;
            uint64_t now;
            assert_int_equal(mv_guest_phys_read(d, g << 12, &now, 8), 0);
            assert_int_equal(now, val);
        }
        assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, RAM_PAGES, bm, RAM_PAGES, &done,
                                                        &dirty), 0);
        /* Every page written since the last clean is reported; so is every page whose
         * contents changed, whoever changed them. */
        for (mv_gfn_t g = 0; g < RAM_PAGES; g++) {
            uint64_t now;
            assert_int_equal(mv_guest_phys_read(d, g << 12, &now, 8), 0);
            bool rep = (bm[g / 64] >> (g % 64)) & 1;
            if ((written[g] || now != snap[g]) && !rep)
                fail_msg("round %u: gfn %#llx written but not reported dirty", round,
                         (unsigned long long)g);
            snap[g] = now;
        }
        th_assert_audit_clean(h);
    }
    struct mv_shadow_stats st = shd_stats(d);
    assert_true(st.evictions > 0);
    assert_true(st.pool_frames <= 2 * MV_SHADOW_FLOOR_PER_VCPU);
    assert_int_equal(st.budget, 2 * MV_SHADOW_FLOOR_PER_VCPU);
    assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    shd_kill(h, d);
}

/* ---- The root in use during CR3 switches (XSA-438) ---------------------------------- */

#define NR_ROOTS 12u

static void test_root_switch_at_floor(void **state)
{
    (void)state;
    mv_domain_t *d = shd_domain(h, 10, 2, 2 * MV_SHADOW_FLOOR_PER_VCPU, RAM_PAGES, 0, 0);
    build_tree(d);
    /* Root r (gfn 200 + r): L4[0] shared, L4[1] -> L3 (300 + r) -> L2 -> L1 -> gfn 600 + r. */
    for (unsigned r = 0; r < NR_ROOTS; r++) {
        mv_gfn_t l4 = 200 + r, l3 = 300 + r, l2 = 320 + r, l1 = 340 + r;
        gpoke(d, l4, 0, (G_L3 << 12) | TABLE);
        gpoke(d, l4, 1, (l3 << 12) | TABLE);
        gpoke(d, l3, 0, (l2 << 12) | TABLE);
        gpoke(d, l2, 0, (l1 << 12) | TABLE);
        gpoke(d, l1, 0, ((600ull + r) << 12) | TABLE);
    }
    mv_vcpu_t *v[2] = {mv_domain_vcpu(d, 0), mv_domain_vcpu(d, 1)};
    mv_paddr_t root[2] = {0, 0};
    unsigned cur[2] = {0, 0};
    struct th_rng rng = {.s = 438};
    for (unsigned iter = 0; iter < 600; iter++) {
        unsigned c = iter & 1, r = (unsigned)th_rand_below(&rng, NR_ROOTS);
        uint64_t cr3 = (200ull + r) << 12;
        assert_int_equal(mv_shadow_set_cr3(v[c], cr3, &root[c]), 0);
        cur[c] = r;
        uint64_t priv = 1ull << 39, shared = VA_BASE + th_rand_below(&rng, 64) * 4096;
        shd_exact(h, v[c], root[c], cr3, priv);
        shd_exact(h, v[c], root[c], cr3, shared);
        assert_int_equal(swalk(h, root[c], priv).mfn, shd_mfn(d, 600 + r));
        /* The other vCPU's root is still its root: a live L4 shadow of its CR3. */
        unsigned o = c ^ 1;
        if (root[o]) {
            struct sh_domain *s = sh_of(d);
            struct sh_vcpu *sv = shv_of(v[o]);
            struct sh_page *sp = &s->pages[sv->cur];
            assert_int_equal(sp->state, SLOT_USED);
            assert_int_equal(sp->type, SH_L4);
            assert_int_equal(sp->gfn, 200 + cur[o]);
            assert_int_equal(sp->smfn << 12, root[o]);
            struct mv_vcpu_state vs = shd_state(v[o]);
            shd_agrees(h, d, root[o], (200ull + cur[o]) << 12, priv, &vs);
            shd_agrees(h, d, root[o], (200ull + cur[o]) << 12, shared, &vs);
        }
        if (iter % 100 == 99)
            th_assert_audit_clean(h);
    }
    struct mv_shadow_stats st = shd_stats(d);
    assert_true(st.evictions > 0);
    assert_true(st.pool_frames <= 2 * MV_SHADOW_FLOOR_PER_VCPU);
    assert_true(st.shadows[SH_L4] <= 2 * MV_SHADOW_FLOOR_PER_VCPU);
    /* A root's gfn ballooned out under the vCPU: the root stays (emptied), the switch away
     * and back works. */
    unsigned r = cur[0];
    shd_decrease(d, 200 + r);
    uint32_t code;
    assert_int_equal(shd_fault(v[0], 1ull << 39, 0, &code, NULL), MV_SHADOW_INJECT);
    assert_int_equal(code, MV_PFEC_P | MV_PFEC_RSVD);
    mv_paddr_t rt;
    assert_int_equal(mv_shadow_set_cr3(v[0], (200ull + r) << 12, &rt), MV_EFAULT);
    unsigned other = (r + 1) % NR_ROOTS;
    assert_int_equal(mv_shadow_set_cr3(v[0], (200ull + other) << 12, &rt), 0);
    shd_exact(h, v[0], rt, (200ull + other) << 12, 1ull << 39);
    shd_kill(h, d);
}

/* ---- Removing a gfn with no frame behind it (XSA-430) ------------------------------- */

struct shadow_snap {
    uint32_t n;
    uint32_t pi[64];
    uint8_t tab[64][4096];
    struct mv_shadow_stats st;
};

static void snap_take(mv_domain_t *d, struct shadow_snap *sn)
{
    struct sh_domain *s = sh_of(d);
    sn->n = 0;
    for (uint32_t pi = 0; pi < s->cap; pi++)
        if (s->pages[pi].state == SLOT_USED) {
            assert_true(sn->n < 64);
            sn->pi[sn->n] = pi;
            memcpy(sn->tab[sn->n++], sh_table(s, &s->pages[pi]), 4096);
        }
    sn->st = shd_stats(d);
}

static void snap_same(mv_domain_t *d, const struct shadow_snap *a)
{
    static struct shadow_snap b;
    snap_take(d, &b);
    assert_int_equal(a->n, b.n);
    assert_memory_equal(a->pi, b.pi, a->n * sizeof(a->pi[0]));
    for (uint32_t i = 0; i < a->n; i++)
        assert_memory_equal(a->tab[i], b.tab[i], 4096);
    assert_memory_equal(&a->st, &b.st, sizeof(a->st));
}

static void test_remove_without_frame(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(11, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    const mv_mfn_t dev = 1ull << 30; /* far above machine memory */
    assert_int_equal(mv_p2m_map_mmio(d, 5000, dev, 2, MV_P2M_MT_UC), 0);
    gpoke(d, G_L1B, 2, (5000ull << 12) | TABLE);
    assert_int_equal(mv_p2m_set_special(d, 30, 1), 0); /* VA_BASE + 14 pages */
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    for (unsigned i = 0; i < 64; i++) {
        shd_exact(h, v, root, cr3, VA_BASE + i * 4096ull);
        shd_exact(h, v, root, cr3, VA_B + i * 4096ull);
    }
    assert_int_equal(swalk(h, root, VA_B + 2 * 4096).mfn, dev); /* mmio passed through */
    assert_true(swalk(h, root, VA_BASE + 14 * 4096).present);
    static struct shadow_snap sn;
    snap_take(d, &sn);

    uint64_t done;
    mv_gfn_t g;
    struct {
        mv_gfn_t gfn;
        unsigned order;
        int rc;
    } refused[] = {
        {4500, 0, MV_ENOENT},            /* a hole */
        {RAM_PAGES, 9, MV_ENOENT},       /* a 2 MiB hole */
        {5000, 0, MV_EPERM},             /* mmio */
        {30, 0, MV_EPERM},               /* special */
        {1ull << 28, 0, MV_ERANGE},      /* beyond the width */
        {~0ull, 0, MV_ERANGE},
    };
    for (unsigned i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        g = refused[i].gfn;
        assert_int_equal(mv_decrease_reservation(d, &g, 1, refused[i].order, &done),
                         refused[i].rc);
        snap_same(d, &sn);
    }
    assert_int_equal(swalk(h, root, VA_B + 2 * 4096).mfn, dev);
    th_assert_audit_clean(h);

    /* The same gfn twice (XSA-277 shape): the first zaps its leaf, the second is a hole. */
    shd_decrease(d, 17);
    assert_false(swalk(h, root, VA_BASE + 4096).present);
    assert_int_equal(shd_stats(d).zapped, sn.st.zapped + 1);
    snap_take(d, &sn);
    g = 17;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_ENOENT);
    snap_same(d, &sn);
    /* A batch: the RAM extent goes, the hole stops it with done = 1. */
    mv_gfn_t batch[2] = {18, 4500};
    assert_int_equal(mv_decrease_reservation(d, batch, 2, 0, &done), MV_ENOENT);
    assert_int_equal(done, 1);
    assert_false(swalk(h, root, VA_BASE + 2 * 4096).present);
    for (unsigned i = 3; i < 64; i++)
        assert_true(swalk(h, root, VA_BASE + i * 4096ull).present);
    shd_exact(h, v, root, cr3, VA_BASE + 4096);
    shd_exact(h, v, root, cr3, VA_BASE + 2 * 4096);
    assert_int_equal(mv_p2m_set_special(d, 30, 0), 0);
    shd_kill(h, d);
}

/* ---- Shadow reference limits (XSA-249) ----------------------------------------------- */

#define RL_TABLES 16u
#define RL_GFN 700ull

static void test_refcount_limits(void **state)
{
    (void)state;
    mv_domain_t *d = shd_domain(h, 12, 1, 0, RAM_PAGES, 0, 0);
    gpoke(d, G_L4, 0, (G_L3 << 12) | TABLE);
    gpoke(d, G_L3, 0, (G_L2 << 12) | TABLE);
    for (unsigned t = 0; t < RL_TABLES; t++) {
        gpoke(d, G_L2, t, ((100ull + t) << 12) | TABLE);
        for (unsigned i = 0; i < 512; i++)
            gpoke(d, 100 + t, i, (RL_GFN << 12) | TABLE);
    }
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    const uint64_t n = RL_TABLES * 512ull;
    for (uint64_t k = 0; k < n; k++)
        assert_int_equal(shd_fault(v, k << 12, MV_PFEC_W, NULL, NULL), MV_SHADOW_FIXED);
    mv_mfn_t m = shd_mfn(d, RL_GFN);
    for (uint64_t k = 0; k < n; k++) {
        struct sw s = swalk(h, root, k << 12);
        assert_true(s.present && s.w);
        assert_int_equal(s.mfn, m);
    }
    assert_int_equal(shd_stats(d).shadows[SH_L1], RL_TABLES);
    th_assert_audit_clean(h);

    /* The page becomes a page table: every one of its 8192 leaves loses write access. */
    uint64_t *page = mv_frame_va(h, m);
    hw_write(v, root, 0, (701ull << 12) | TABLE); /* through any of its leaves */
    assert_int_equal(page[0], (701ull << 12) | TABLE);
    emw(v, G_L2, RL_TABLES, (RL_GFN << 12) | TABLE | PTE_A);
    shd_exact(h, v, root, cr3, (uint64_t)RL_TABLES << 21);
    for (uint64_t k = 0; k < n; k++) {
        struct sw s = swalk(h, root, k << 12);
        assert_true(s.present && !s.w);
    }
    th_assert_audit_clean(h);

    /* Ballooned out: every leaf goes, and only those. */
    struct mv_shadow_stats st0 = shd_stats(d);
    shd_decrease(d, RL_GFN);
    struct mv_shadow_stats st1 = shd_stats(d);
    assert_int_equal(st1.zapped - st0.zapped, n);
    assert_int_equal(st1.shadows[SH_L1], RL_TABLES); /* its own L1 shadow is gone */
    for (uint64_t k = 0; k < n; k++)
        assert_false(swalk(h, root, k << 12).present);
    mv_paddr_t gpa;
    assert_int_equal(shd_fault(v, 5 << 12, 0, NULL, &gpa), MV_SHADOW_MMIO);
    assert_int_equal(gpa, RL_GFN << 12);
    /* Back with a new frame: the leaves come back, onto it. */
    shd_populate(d, RL_GFN);
    for (uint64_t k = 0; k < n; k += 97)
        shd_exact(h, v, root, cr3, k << 12);
    assert_int_equal(swalk(h, root, 0).mfn, shd_mfn(d, RL_GFN));
    shd_kill(h, d);
}

/* ---- A table the guest stops using but keeps writing -------------------------------- */

static void test_abandoned_table_written(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(13, 1, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    gpoke(d, G_L1B, 0, (G_L1 << 12) | TABLE); /* G_L1 as data at VA_B */
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    for (unsigned i = 0; i < 64; i++)
        shd_exact(h, v, root, cr3, VA_BASE + i * 4096ull);
    assert_false(swalk(h, root, VA_B).w);

    /* The guest unlinks it (and would free it), then uses the page for data. */
    emw(v, G_L2, 2, 0);
    assert_false(swalk(h, root, VA_BASE).present);
    static uint64_t model[512];
    assert_int_equal(mv_guest_phys_read(d, G_L1 << 12, model, 4096), 0);
    struct th_rng rng = {.s = 13};
    uint64_t writes0 = shd_stats(d).emulated_writes;
    for (unsigned k = 0; k < 256; k++) {
        unsigned idx = (unsigned)th_rand_below(&rng, 512);
        uint64_t val = th_rand(&rng); /* anything: it is data now */
        hw_write(v, root, VA_B + 8 * idx, val);
        model[idx] = val;
        if (k % 64 == 63)
            th_assert_audit_clean(h);
    }
    static uint64_t now[512];
    assert_int_equal(mv_guest_phys_read(d, G_L1 << 12, now, 4096), 0);
    assert_memory_equal(now, model, 4096);
    /* Its shadows (if any remain) stayed exact: nothing they hold names a stale entry. */
    th_assert_audit_clean(h);
    assert_true(shd_stats(d).emulated_writes >= writes0);

    /* Once no shadow of it is left, it is plain data: writes no longer trap. */
    assert_int_equal(mv_shadow_blow(d), 0);
    assert_int_equal(shd_fault(v, VA_B, MV_PFEC_W, NULL, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(h, root, VA_B).w);
    uint64_t writes1 = shd_stats(d).emulated_writes;
    for (unsigned i = 0; i < 64; i++)
        hw_write(v, root, VA_B + 8 * i, ((16ull + i) << 12) | TABLE);
    assert_int_equal(shd_stats(d).emulated_writes, writes1);

    /* Reused as a table: shadowed from what it holds now, its data mapping read-only. */
    emw(v, G_L2, 2, (G_L1 << 12) | TABLE | PTE_A);
    for (unsigned i = 0; i < 64; i++)
        shd_exact(h, v, root, cr3, VA_BASE + i * 4096ull);
    assert_false(swalk(h, root, VA_B).w);
    assert_int_equal(shd_fault(v, VA_B, MV_PFEC_W | MV_PFEC_P, NULL, NULL), MV_SHADOW_EMULATE);
    shd_kill(h, d);
}

/* ---- A table written by another vCPU while its shadow is being made -------------------- */

/*
 * The window the recheck of a guest walk must close: a vCPU faults, walks the guest's
 * tables, and shadows the L1 it found; making the shadow removes write access to the L1
 * frame and flushes, and until that flush completes another vCPU may still write the L1
 * through a writable translation it holds. The test's flush hook plays that vCPU.
 */
static _Atomic(uint64_t *) race_slot;
static uint64_t race_val;
static _Atomic int race_fired;

static void race_flush(const struct mv_platform *p, const struct mv_flush_request *req)
{
    (void)p;
    (void)req;
    uint64_t *slot = atomic_exchange(&race_slot, NULL);
    if (slot) {
        __atomic_store_n(slot, race_val, __ATOMIC_RELEASE);
        atomic_store(&race_fired, 1);
    }
}

static void test_table_written_during_write_protect(void **state)
{
    (void)state;
    mv_domain_t *d = tree_dom(14, 2, 0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    gpoke(d, G_L1B, 0, (G_L1 << 12) | TABLE); /* G_L1 as data at VA_B */
    gpoke(d, G_L1, 1, (17ull << 12) | TABLE);
    uint64_t cr3 = G_L4 << 12;
    mv_paddr_t root = shd_cr3(v, G_L4);
    void (*saved)(const struct mv_platform *, const struct mv_flush_request *) = tp->p.tlb_flush;
    tp->p.tlb_flush = race_flush;
    uint64_t *l1 = mv_frame_va(h, shd_mfn(d, G_L1));

    /* The L1 frame is writable data while nothing shadows it. */
    assert_int_equal(shd_fault(v, VA_B, MV_PFEC_W, NULL, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(h, root, VA_B).w);
    /* Entry 0 moves from gfn 16 to gfn 77 during the flush that write-protects G_L1. */
    race_val = (77ull << 12) | TABLE;
    atomic_store(&race_fired, 0);
    atomic_store(&race_slot, &l1[0]);
    uint32_t kind = shd_fault(v, VA_BASE, 0, NULL, NULL);
    assert_int_equal(kind, MV_SHADOW_FIXED);
    assert_true(atomic_load(&race_fired));
    assert_false(swalk(h, root, VA_B).w);
    struct mv_vcpu_state vs = shd_state(v);
    shd_agrees(h, d, root, cr3, VA_BASE, &vs); /* never the old frame */
    shd_exact(h, v, root, cr3, VA_BASE);
    assert_int_equal(swalk(h, root, VA_BASE).mfn, shd_mfn(d, 77));
    th_assert_audit_clean(h);

    /* The dirty bit the walk set is cleared in the same window: no writable leaf may
     * stand on a clean guest entry (the guest would lose track of the write). */
    assert_int_equal(mv_shadow_blow(d), 0);
    assert_int_equal(shd_fault(v, VA_B, MV_PFEC_W, NULL, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(h, root, VA_B).w);
    race_val = (17ull << 12) | TABLE | PTE_A; /* A kept, D gone */
    atomic_store(&race_fired, 0);
    atomic_store(&race_slot, &l1[1]);
    kind = shd_fault(v, VA_BASE + 4096, MV_PFEC_W, NULL, NULL);
    assert_int_equal(kind, MV_SHADOW_FIXED);
    assert_true(atomic_load(&race_fired));
    vs = shd_state(v);
    shd_agrees(h, d, root, cr3, VA_BASE + 4096, &vs);
    if (swalk(h, root, VA_BASE + 4096).w)
        assert_true(gget(d, G_L1, 1) & PTE_D);
    /* The guest's retry sets D again and gets its writable leaf. */
    assert_int_equal(shd_fault(v, VA_BASE + 4096, MV_PFEC_W, NULL, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(h, root, VA_BASE + 4096).w);
    assert_true(gget(d, G_L1, 1) & PTE_D);
    tp->p.tlb_flush = saved;
    shd_kill(h, d);
}

/* ---- A guest that rewrites its own tables without pause ---------------------------------- */

/*
 * Two vCPUs rewrite the guest's tables at every level, the roots included, 100000 times and
 * more, with values of every kind: not present (with attacker-chosen address bits), the next
 * table down, the table itself, any table of any level, 2 MiB and 1 GiB leaves, reserved
 * bits, frames with no RAM behind them. Between the writes they fault, INVLPG, load CR3 and
 * flush; once with out-of-sync L1s (the default) and once with MV_DOMF_SHADOW_SYNC.
 *
 * The guest writes its tables as its kernel would: through a window of its address space
 * (L4 slot HG_WIN, the kernel half) that maps every table frame as data, so a write traps
 * when the shadow leaf is read-only and goes straight to memory when it is writable (an L1
 * out of sync). Other writes go through whatever the hostile entries map - tables aliased at
 * any level through 4 KiB, 2 MiB and 1 GiB leaves - and some come from the instruction
 * emulator directly. The guest only spares the window's own tables.
 *
 * Checked: each fault's outcome against the guest's tables (hg_expect); no write ever lands
 * in a frame whose writes must trap; at every resync point (a CR3 load, a flush) every
 * translation the vCPU's root holds agrees with the guest's tables through the p2m and no
 * shadow leaf anywhere lets the guest write a page-table frame that is not out of sync.
 * Between resync points an out-of-sync L1 may lag behind the guest, as a TLB may, except
 * where the engine promises otherwise, and that is checked too: right after an emulated
 * write, translations through the entries it wrote; right after a fault that linked a
 * shadow anew, every translation below the new link. A "kmap" pattern (an L1 entry set,
 * its address invalidated and used, the entry put back without an invalidation) makes a
 * guest value come back to what a snapshot holds. The pool stays within its budget after
 * every operation, the statistics match the calls made, the audit is clean every 4096
 * operations and at the end.
 */
#define HG_VCPUS 2u
#define HG_RAM 1024u        /* two 2 MiB extents */
#define HG_POOL 48u         /* 16 frames above the floor of two vCPUs */
#define HG_WRITES 100000u   /* table writes per pass, at least */
#define HG_WIN 300u         /* the window's L4 slot */
#define HG_W3 20ull         /* the window's tables: never named by a hostile entry */
#define HG_W2 21ull
#define HG_W1 22ull
#define HG_DATA 64ull       /* data gfns [64, 128) */
#define HG_NDATA 64u
#define HG_HOLE 3000ull     /* within the width, no RAM */
#define HG_SPAN 8u          /* indices 0..7 used at each level */

/* The tables the guest rewrites: three roots, two L3s, three L2s, eight L1s. */
static const mv_gfn_t hg_table[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
#define HG_NTABLES (sizeof(hg_table) / sizeof(hg_table[0]))

/* The level each table serves at in the guest's own tree (3: L4 .. 0: L1). */
static unsigned hg_level(mv_gfn_t t) { return t <= 3 ? 3 : t <= 5 ? 2 : t <= 8 ? 1 : 0; }

static uint64_t hg_win_va(mv_gfn_t t) { return shd_va(HG_WIN, 0, 0, (unsigned)t); }

struct hg {
    mv_domain_t *d;
    struct sh_domain *s;
    bool sync;
    mv_vcpu_t *v[HG_VCPUS];
    mv_paddr_t root[HG_VCPUS];
    uint64_t cr3[HG_VCPUS];
    struct mv_vcpu_state st[HG_VCPUS];
    mv_mfn_t mfn[HG_RAM]; /* the p2m never changes here: frames by gfn, for reverse lookups */
    struct th_rng r;
    /* What the test did, to hold the statistics against. */
    uint64_t emulated, faults, kinds[MV_SHADOW_NR_KINDS];
    uint64_t writes, direct, direct_l1, resync_points, leaves_checked, invlpgs;
    uint64_t fixed_then_protected, linked_checks, kmaps;
    struct mv_shadow_stats last;
};

/* The gfn of a machine frame of the guest, or MV_INVALID_GFN. */
static mv_gfn_t hg_gfn(const struct hg *g, mv_mfn_t m)
{
    for (mv_gfn_t x = 0; x < HG_RAM; x++)
        if (g->mfn[x] == m)
            return x;
    return MV_INVALID_GFN;
}

static bool hg_window_table(mv_gfn_t x) { return x >= HG_W3 && x <= HG_W1; }

/* An entry a hostile guest might write at level lv of table `self`. */
static uint64_t hg_entry(struct th_rng *r, unsigned lv, mv_gfn_t self)
{
    uint64_t x = th_rand(r), k = x % 100;
    x >>= 7;
    uint64_t fl = PTE_P | ((x & 1) ? PTE_W : 0) | ((x & 2) ? PTE_U : 0) |
                  ((x & 0x1c) ? PTE_A : 0) | ((x & 0x20) ? PTE_D : 0) |
                  ((x & 0x3c0) == 0 ? PTE_NX : 0);
    x >>= 10;
    mv_gfn_t to;
    if (k < 10)
        return 0;
    if (k < 15)
        return th_rand(r) & ~PTE_P; /* not present, any address bits */
    if (k < 58) {                   /* the next table down, or data */
        if (lv == 0)
            to = HG_DATA + x % HG_NDATA;
        else if (lv == 3)
            to = 4 + x % 2;
        else if (lv == 2)
            to = 6 + x % 3;
        else
            to = 9 + x % 8;
        fl |= PTE_W | PTE_A | ((x & 0x100) ? PTE_D : 0);
    } else if (k < 70) {
        to = self; /* itself: a recursive slot, or an L1 that maps its own frame */
    } else if (k < 82) {
        to = hg_table[x % HG_NTABLES]; /* a table of any level */
    } else if (k < 88) {
        /* A superpage: 2 MiB over tables (0), over RAM (512), over no RAM (1024); 1 GiB
         * over everything; at L4 and in L1s, PS is reserved or PAT. */
        static const mv_gfn_t base2m[] = {0, 512, 1024};
        to = lv == 1 ? base2m[x % 3] : lv == 0 ? HG_DATA + x % HG_NDATA : 0;
        fl |= PTE_PS | PTE_A;
    } else if (k < 93) {
        to = HG_DATA + x % HG_NDATA;
        fl |= 1ull << (40 + (x >> 8) % 12); /* beyond the 40-bit width */
    } else if (k < 96) {
        to = lv == 2 ? 2 : 512 + 2; /* a misaligned superpage (bit 13 set) */
        fl |= PTE_PS | PTE_A;
    } else {
        to = (x & 1) ? HG_HOLE : (1ull << 27) + (x >> 1) % 4096; /* no RAM */
    }
    return to << 12 | fl;
}

/*
 * Translations to check below a shadow table: all of them (NULL), or, scanning only the
 * indices guest addresses use here (0..63, and the window's L4 slot), those whose path goes
 * through entries [first, last] of one of the shadow tables `tab` (or all, with in = true).
 */
struct hg_mark {
    mv_mfn_t tab[SH_NR_TYPES];
    unsigned n, first, last;
};

static uint64_t hg_leaves(struct hg *g, unsigned c, mv_mfn_t table, int lv, uint64_t va,
                          const struct hg_mark *m, bool in)
{
    const uint64_t *t = mv_frame_va(h, table);
    bool marked = false;
    for (unsigned k = 0; m && k < m->n; k++)
        marked |= m->tab[k] == table;
    uint64_t n = 0;
    for (unsigned i = 0; i < 512; i++) {
        if (m && i >= 64 && !(lv == 3 && i == HG_WIN))
            continue;
        uint64_t e = __atomic_load_n(&t[i], __ATOMIC_ACQUIRE);
        if (!(e & PTE_P))
            continue;
        bool sub = in || (marked && i >= m->first && i <= m->last);
        uint64_t a = va | (uint64_t)i << (12 + 9 * lv);
        if (a & (1ull << 47))
            a |= 0xffff000000000000ull;
        if (lv > 0) {
            n += hg_leaves(g, c, (e & PTE_ADDR) >> 12, lv - 1, a, m, sub);
        } else if (!m || sub) {
            assert_true(shd_agrees(h, g->d, g->root[c], g->cr3[c], a, &g->st[c]));
            n++;
        }
    }
    return n;
}

/* The shadow entries on va's path from vCPU c's root: e[3] in the root .. e[1]; 0 past
 * the first entry not present. */
static void hg_path(const struct hg *g, unsigned c, uint64_t va, uint64_t e[4])
{
    mv_mfn_t t = g->root[c] >> 12;
    memset(e, 0, 4 * sizeof(e[0]));
    for (int lv = 3; lv >= 1; lv--) {
        const uint64_t *tab = mv_frame_va(h, t);
        e[lv] = __atomic_load_n(&tab[(va >> (12 + 9 * lv)) & 511], __ATOMIC_ACQUIRE);
        if (!(e[lv] & PTE_P))
            return;
        t = (e[lv] & PTE_ADDR) >> 12;
    }
}

/*
 * A fault linked a shadow anew under the highest entry of va's path that changed: whatever
 * lies below it was brought in sync first (oos.c: the staleness the guest allowed for the
 * walks that went through an out-of-sync L1 must not reach walks that never did).
 */
static void hg_linked_anew(struct hg *g, unsigned c, uint64_t va, const uint64_t before[4])
{
    uint64_t now[4];
    hg_path(g, c, va, now);
    for (int lv = 3; lv >= 1; lv--) {
        if (!(now[lv] & PTE_P))
            return;
        if ((before[lv] & PTE_P) && !((before[lv] ^ now[lv]) & PTE_ADDR))
            continue;
        static const struct hg_mark all = {.n = 0};
        uint64_t prefix = va & ~((1ull << (12 + 9 * lv)) - 1);
        g->linked_checks++;
        g->leaves_checked += hg_leaves(g, c, (now[lv] & PTE_ADDR) >> 12, lv - 1, prefix, &all,
                                       true);
        return;
    }
}

/*
 * After an emulated write of entries [first, last] of gfn x (old: what they held): each is
 * revalidated in every shadow of x, so a translation through it agrees with the guest's
 * tables at once - through a leaf entry always, through an upper entry when the write
 * linked it to another table (what lies below was brought in sync first). Checked for
 * every translation of vCPU c's root that goes through one of them.
 */
static void hg_after_emulated(struct hg *g, unsigned c, mv_gfn_t x, unsigned first,
                              unsigned last, const uint64_t *old)
{
    struct hg_mark m = {.first = first, .last = last};
    bool anew = false;
    for (unsigned i = first; i <= last; i++) {
        uint64_t nw = gget(g->d, x, i), ok = PTE_P | PTE_A;
        anew |= (nw & ok) == ok && ((old[i - first] & ok) != ok ||
                                    ((old[i - first] ^ nw) & (PTE_ADDR | PTE_PS)));
    }
    for (unsigned t = SH_L1; t <= SH_L4; t++) {
        uint32_t pi = mv__sh_lookup(g->s, x, t);
        if (pi != SH_NIL && (t == SH_L1 || anew))
            m.tab[m.n++] = g->s->pages[pi].smfn;
    }
    if (m.n)
        g->leaves_checked += hg_leaves(g, c, g->root[c] >> 12, 3, 0, &m, false);
}

/* What the guest's tables say of an access, against what the fault handler answered. */
static void hg_expect(struct hg *g, unsigned c, uint64_t va, uint32_t ec, uint32_t kind,
                      uint32_t code, mv_paddr_t gpa)
{
    struct gw w = gwalk(g->d, g->cr3[c], va, ec, &g->st[c]);
    if (!w.ok) {
        if (kind != MV_SHADOW_INJECT || code != w.pfec)
            fail_msg("va %#llx ec %#x: the guest's tables fault (%#x), outcome %u (%#x)",
                     (unsigned long long)va, ec, w.pfec, kind, code);
        return;
    }
    if ((ec & MV_PFEC_W) && !w.w) { /* CR0.WP is set */
        assert_int_equal(kind, MV_SHADOW_INJECT);
        assert_int_equal(code, MV_PFEC_P | (ec & (MV_PFEC_W | MV_PFEC_U)));
        return;
    }
    mv_paddr_t want = w.gfn << 12 | (va & 0xfff);
    if (!p2m_is_ram(shd_p2m(g->d, w.gfn).type)) {
        assert_int_equal(kind, MV_SHADOW_MMIO);
        assert_int_equal(gpa, want);
        return;
    }
    if (kind == MV_SHADOW_EMULATE) {
        /* Only a write to a frame whose writes must trap is emulated. */
        assert_true(ec & MV_PFEC_W);
        assert_int_equal(gpa, want);
        assert_true(mv__sh_gfn_protected(g->s, w.gfn));
        return;
    }
    assert_int_equal(kind, MV_SHADOW_FIXED);
    /* The shadow now translates va as the guest does, and allows the access. */
    assert_true(shd_agrees(h, g->d, g->root[c], g->cr3[c], va, &g->st[c]));
    /* A write either may go now, or its frame became a table meanwhile (the walk linked
     * an out-of-sync L1 anew and resynced it, its own target included): then the retry
     * faults again and is emulated. */
    if ((ec & MV_PFEC_W) && !swalk(h, g->root[c], va).w) {
        assert_true(mv__sh_gfn_protected(g->s, w.gfn));
        g->fixed_then_protected++;
    }
}

static uint32_t hg_fault(struct hg *g, unsigned c, uint64_t va, uint32_t ec, mv_paddr_t *gpa)
{
    struct mv_shadow_outcome o;
    uint64_t before[4];
    hg_path(g, c, va, before);
    assert_int_equal(mv_shadow_page_fault(g->v[c], va, ec, 0, &o), 0);
    assert_true(o.kind < MV_SHADOW_NR_KINDS);
    g->faults++;
    g->kinds[o.kind]++;
    hg_expect(g, c, va, ec, o.kind, o.error_code, o.gpa);
    if (o.kind == MV_SHADOW_FIXED)
        hg_linked_anew(g, c, va, before);
    *gpa = o.gpa;
    return o.kind;
}

/* A read at va, as the hardware does it: a fault only when the shadow has no translation. */
static void hg_read(struct hg *g, unsigned c, uint64_t va)
{
    if (swalk(h, g->root[c], va).present)
        return; /* the TLB's business: it may lag behind an out-of-sync L1 until invalidated */
    mv_paddr_t gpa;
    (void)hg_fault(g, c, va, 0, &gpa);
}

/*
 * The hardware's write of n words at va (n = 1, 2), or of a compare-exchange of one word
 * (cmp non-NULL: the value the guest read): straight to the frame when the shadow lets it,
 * else the fault and what its outcome says. False when nothing was written (the guest took
 * a fault, or the write would have hit the window's tables).
 */
static bool hg_write(struct hg *g, unsigned c, uint64_t va, const uint64_t *vals, unsigned n,
                     const uint64_t *cmp)
{
    for (int tries = 0; tries < 3; tries++) {
        struct sw s = swalk(h, g->root[c], va);
        if (s.present && s.w) {
            mv_gfn_t x = hg_gfn(g, s.mfn);
            if (x == MV_INVALID_GFN)
                fail_msg("va %#llx: writable onto mfn %#llx, no frame of the guest",
                         (unsigned long long)va, (unsigned long long)s.mfn);
            if (mv__sh_gfn_protected(g->s, x))
                fail_msg("va %#llx: a write to table gfn %#llx would not trap",
                         (unsigned long long)va, (unsigned long long)x);
            if (hg_window_table(x))
                return false;
            uint64_t *p = (uint64_t *)((uint8_t *)mv_frame_va(h, s.mfn) + (va & 0xff8));
            if (cmp) {
                uint64_t exp = *cmp;
                assert_true(__atomic_compare_exchange_n(p, &exp, vals[0], false,
                                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
            } else {
                for (unsigned i = 0; i < n; i++)
                    __atomic_store_n(&p[i], vals[i], __ATOMIC_RELEASE);
            }
            g->direct++;
            g->direct_l1 += mv__sh_lookup(g->s, x, SH_L1) != SH_NIL;
            return true;
        }
        mv_paddr_t gpa;
        uint32_t kind = hg_fault(g, c, va, MV_PFEC_W | (s.present ? MV_PFEC_P : 0), &gpa);
        if (kind == MV_SHADOW_FIXED)
            continue;
        if (kind != MV_SHADOW_EMULATE || hg_window_table(gpa >> 12))
            return false;
        mv_gfn_t x = gpa >> 12;
        unsigned i = (unsigned)(gpa & 0xfff) / 8;
        uint64_t old[2];
        for (unsigned k = 0; k < n; k++)
            old[k] = gget(g->d, x, i + k);
        if (cmp) {
            uint64_t exp = *cmp;
            assert_int_equal(mv_shadow_emulate_cmpxchg(g->v[c], gpa, &exp, vals[0], 8), 0);
        } else {
            assert_int_equal(mv_shadow_emulate_write(g->v[c], gpa, vals, 8 * n), 0);
        }
        g->emulated++;
        hg_after_emulated(g, c, x, i, i + n - 1, old);
        return true;
    }
    fail_msg("va %#llx: no write after a fixed fault", (unsigned long long)va);
    return false;
}

/* A CR3 load or a flush just brought vCPU c's view in sync: all of it is checked. */
static void hg_resync_point(struct hg *g, unsigned c)
{
    g->leaves_checked += hg_leaves(g, c, g->root[c] >> 12, 3, 0, NULL, false);
    (void)shd_no_writable_table(h, g->d);
    g->resync_points++;
}

/* After every operation: the pool within its budget, the counters what the calls made. */
static void hg_stats(struct hg *g)
{
    struct mv_shadow_stats st = shd_stats(g->d), *o = &g->last;
    assert_int_equal(st.budget, HG_POOL);
    assert_true(st.pool_frames <= st.budget);
    uint64_t shadows = 0, faults = 0;
    for (unsigned t = 1; t < SH_NR_TYPES; t++)
        shadows += st.shadows[t];
    for (unsigned k = 0; k < MV_SHADOW_NR_KINDS; k++) {
        faults += st.faults[k];
        assert_int_equal(st.faults[k], g->kinds[k]);
    }
    assert_true(shadows <= st.pool_frames);
    assert_int_equal(faults, g->faults);
    assert_int_equal(st.emulated_writes, g->emulated);
    assert_true(st.oos_pages <= (g->sync ? 0 : HG_VCPUS * MV_SHADOW_OOS_DEFAULT));
    assert_true(st.unsyncs >= st.resyncs + st.oos_pages); /* the rest were dropped */
    assert_true(st.unsyncs >= o->unsyncs && st.resyncs >= o->resyncs);
    assert_true(st.resync_fixed >= o->resync_fixed && st.evictions >= o->evictions);
    assert_true(st.zapped >= o->zapped && st.unshadowed_early >= o->unshadowed_early);
    assert_true(st.unshadowed_freed >= o->unshadowed_freed);
    if (g->sync)
        assert_true(st.unsyncs == 0 && st.resyncs == 0 && st.resync_fixed == 0);
    *o = st;
}

static void hg_build(struct hg *g)
{
    mv_domain_t *d = g->d;
    const uint64_t tb = TABLE | PTE_A, leaf = TABLE | PTE_A | PTE_D;
    for (mv_gfn_t r = 1; r <= 3; r++) {
        gpoke(d, r, 0, (4 + r % 2) << 12 | tb);
        gpoke(d, r, 1, 5ull << 12 | tb);
        gpoke(d, r, HG_WIN, HG_W3 << 12 | tb);
    }
    gpoke(d, 4, 0, 6ull << 12 | tb);
    gpoke(d, 4, 1, 7ull << 12 | tb);
    gpoke(d, 5, 0, 8ull << 12 | tb);
    gpoke(d, 5, 1, 6ull << 12 | tb);
    for (unsigned i = 0; i < 4; i++) {
        gpoke(d, 6, i, (9ull + i) << 12 | tb);
        gpoke(d, 7, i, (13ull + i) << 12 | tb);
    }
    gpoke(d, 8, 0, 9ull << 12 | tb);
    gpoke(d, 8, 1, 13ull << 12 | tb);
    gpoke(d, 8, 2, 512ull << 12 | leaf | PTE_PS);
    for (mv_gfn_t t = 9; t <= 16; t++)
        for (unsigned i = 0; i < HG_SPAN; i++)
            gpoke(d, t, i, (HG_DATA + 8 * (t - 9) + i) << 12 | leaf);
    gpoke(d, HG_W3, 0, HG_W2 << 12 | tb);
    gpoke(d, HG_W2, 0, HG_W1 << 12 | tb);
    for (mv_gfn_t x = 0; x < HG_DATA; x++)
        gpoke(d, HG_W1, (unsigned)x, x << 12 | leaf);
}

/* The guest L1 entry that translates va (x, i), by the guest's own tables; false if none. */
static bool hg_leaf_slot(struct hg *g, unsigned c, uint64_t va, mv_gfn_t *x, unsigned *i)
{
    mv_gfn_t t = g->cr3[c] >> 12;
    for (int lv = 3; lv >= 0; lv--) {
        unsigned idx = (unsigned)(va >> (12 + 9 * lv)) & 511;
        if (t >= HG_RAM)
            return false;
        uint64_t e = gget(g->d, t, idx);
        if (!(e & PTE_P) || (lv > 0 && (e & PTE_PS)))
            return false;
        if (lv == 0) {
            *x = t;
            *i = idx;
            return true;
        }
        t = (e & PTE_ADDR) >> 12;
    }
    return false;
}

static uint64_t hg_universe_va(struct th_rng *r)
{
    uint64_t x = th_rand(r);
    return shd_va(x & 7, (x >> 3) & 7, (x >> 6) & 7, (x >> 9) & 7);
}

static void hg_load_cr3(struct hg *g, unsigned c, mv_gfn_t l4)
{
    g->cr3[c] = l4 << 12;
    assert_int_equal(mv_shadow_set_cr3(g->v[c], g->cr3[c], &g->root[c]), 0);
    hg_resync_point(g, c);
}

static void hg_pass(uint32_t id, bool sync, uint64_t seed)
{
    static struct hg g; /* too big for cmocka's stack budget, and one pass at a time */
    memset(&g, 0, sizeof(g));
    g.sync = sync;
    g.r.s = seed;
    struct mv_domain_config cfg = {.size = sizeof(cfg), .domid = id, .type = MV_DOMAIN_HVM,
                                   .paging = MV_PAGING_SHADOW, .nr_vcpus = HG_VCPUS,
                                   .max_pages = HG_RAM, .node_affinity = MV_NODE_ANY,
                                   .flags = sync ? MV_DOMF_SHADOW_SYNC : 0,
                                   .shadow_pool_pages = HG_POOL,
                                   .shadow_pool_max_pages = HG_POOL};
    assert_int_equal(mv_domain_create(h, &cfg, &g.d), 0);
    for (mv_gfn_t x = 0; x < HG_RAM; x += 512) {
        uint64_t done;
        assert_int_equal(mv_populate_physmap(g.d, &x, 1, 9, MV_NODE_ANY, &done), 0);
    }
    for (mv_gfn_t x = 0; x < HG_RAM; x++)
        g.mfn[x] = shd_mfn(g.d, x);
    g.s = sh_of(g.d);
    hg_build(&g);
    g.last = shd_stats(g.d);
    for (unsigned c = 0; c < HG_VCPUS; c++) {
        g.v[c] = mv_domain_vcpu(g.d, c);
        shd_mode(g.v[c], true, true); /* NX and 1 GiB pages, the same on both */
        g.st[c] = shd_state(g.v[c]);
        hg_load_cr3(&g, c, 1 + c);
    }
    unsigned c = 0;
    uint64_t ops = 0;
    while (g.writes < HG_WRITES) {
        struct th_rng *r = &g.r;
        if (th_rand_below(r, 64) == 0)
            c = (unsigned)th_rand_below(r, HG_VCPUS);
        unsigned op = (unsigned)th_rand_below(r, 1000);
        /* A table to write: L1s most often, the roots too. */
        unsigned pick = (unsigned)th_rand_below(r, 100);
        mv_gfn_t t = pick < 55 ? 9 + th_rand_below(r, 8)
                     : pick < 75 ? 6 + th_rand_below(r, 3)
                     : pick < 87 ? 4 + th_rand_below(r, 2)
                                 : 1 + th_rand_below(r, 3);
        unsigned idx = (unsigned)th_rand_below(r, HG_SPAN);
        if (op < 560) {
            /* A table entry written through the window. */
            uint64_t e = hg_entry(r, hg_level(t), t);
            hg_write(&g, c, hg_win_va(t) + 8 * idx, &e, 1, NULL);
            g.writes++;
        } else if (op < 590) {
            /* Two entries in one 16-byte write (an SSE store, a REP MOVS chunk). */
            uint64_t two[2] = {hg_entry(r, hg_level(t), t), hg_entry(r, hg_level(t), t)};
            hg_write(&g, c, hg_win_va(t) + 8 * (idx & ~1u), two, 2, NULL);
            g.writes++;
        } else if (op < 620) {
            /* LOCK CMPXCHG of an entry the guest has just read: A toggled, or replaced. */
            uint64_t old = gget(g.d, t, idx);
            uint64_t nw = th_rand_below(r, 2) ? old ^ PTE_A : hg_entry(r, hg_level(t), t);
            hg_write(&g, c, hg_win_va(t) + 8 * idx, &nw, 1, &old);
            g.writes++;
        } else if (op < 680) {
            /* A write through whatever the hostile entries map at a random address. */
            uint64_t e = hg_entry(r, (unsigned)th_rand_below(r, 4), t);
            hg_write(&g, c, hg_universe_va(r) + 8 * th_rand_below(r, HG_SPAN), &e, 1, NULL);
            g.writes++;
        } else if (op < 720) {
            /* The emulator writes a table for an instruction of its own. */
            uint64_t e = hg_entry(r, hg_level(t), t), old = gget(g.d, t, idx);
            assert_int_equal(mv_shadow_emulate_write(g.v[c], t << 12 | 8 * idx, &e, 8), 0);
            g.emulated++;
            g.writes++;
            hg_after_emulated(&g, c, t, idx, idx, &old);
        } else if (op < 850) {
            hg_read(&g, c, hg_universe_va(r));
        } else if (op < 880) {
            /* kmap: a PTE set, its address invalidated and used, the PTE put back - and
             * only sometimes invalidated again (until then the new translation may stay). */
            uint64_t va = hg_universe_va(r);
            mv_gfn_t x;
            unsigned i;
            if (!hg_leaf_slot(&g, c, va, &x, &i) || x < 1 || x > 16)
                continue;
            uint64_t old = gget(g.d, x, i), nw = hg_entry(r, 0, x);
            hg_write(&g, c, hg_win_va(x) + 8 * i, &nw, 1, NULL);
            assert_int_equal(mv_shadow_invlpg(g.v[c], va), 0);
            hg_read(&g, c, va);
            hg_write(&g, c, hg_win_va(x) + 8 * i, &old, 1, NULL);
            if (th_rand_below(r, 2))
                assert_int_equal(mv_shadow_invlpg(g.v[c], va), 0);
            g.writes += 2;
            g.kmaps++;
        } else if (op < 950) {
            uint64_t va = hg_universe_va(r);
            assert_int_equal(mv_shadow_invlpg(g.v[c], va), 0);
            assert_false(swalk(h, g.root[c], va).present);
            g.invlpgs++;
            if (th_rand_below(r, 2))
                hg_read(&g, c, va); /* rebuilt from the guest's entry as it is now */
        } else if (op < 985) {
            hg_load_cr3(&g, c, 1 + th_rand_below(r, 3));
        } else {
            assert_int_equal(mv_shadow_flush(g.v[c]), 0);
            hg_resync_point(&g, c);
        }
        hg_stats(&g);
        if (++ops % 4096 == 0)
            th_assert_audit_clean(h);
    }
    for (c = 0; c < HG_VCPUS; c++) {
        assert_int_equal(mv_shadow_flush(g.v[c]), 0);
        hg_resync_point(&g, c);
    }
    hg_stats(&g);
    /* Every kind of outcome came up, the pool was too small for the guest, every resync
     * point had translations to check. */
    struct mv_shadow_stats st = g.last;
    for (unsigned k = 0; k < MV_SHADOW_NR_KINDS; k++)
        if (k != MV_SHADOW_DENIED)
            assert_true(g.kinds[k] > 0);
    assert_int_equal(g.kinds[MV_SHADOW_DENIED], 0);
    assert_true(st.evictions > 0 && g.leaves_checked > g.resync_points);
    if (sync) {
        /* Every write to a table trapped. */
        assert_int_equal(g.direct_l1, 0);
        assert_int_equal(st.oos_pages, 0);
    } else {
        /* Out-of-sync L1s took writes that never trapped, and resyncs found them. */
        assert_true(g.direct_l1 > 1000);
        assert_true(st.unsyncs > 0 && st.resyncs > 0 && st.resync_fixed > 0);
    }
    print_message("hostile writer (%s): %llu ops, %llu writes (%llu direct, %llu to L1s), "
                  "%llu emulated, %llu resync points (%llu translations), unsyncs %llu "
                  "resyncs %llu fixed %llu, evictions %llu, fixed writes still trapping %llu, "
                  "subtrees linked anew %llu, kmaps %llu\n",
                  sync ? "in sync" : "out of sync", (unsigned long long)ops,
                  (unsigned long long)g.writes, (unsigned long long)g.direct,
                  (unsigned long long)g.direct_l1, (unsigned long long)g.emulated,
                  (unsigned long long)g.resync_points, (unsigned long long)g.leaves_checked,
                  (unsigned long long)st.unsyncs, (unsigned long long)st.resyncs,
                  (unsigned long long)st.resync_fixed, (unsigned long long)st.evictions,
                  (unsigned long long)g.fixed_then_protected,
                  (unsigned long long)g.linked_checks, (unsigned long long)g.kmaps);
    shd_kill(h, g.d);
}

static void test_table_writer_loop(void **state)
{
    (void)state;
    hg_pass(15, false, 0x7ab1e5);
    hg_pass(16, true, 0x7ab1e5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_outside_ram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserved_bits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_self_map_l4, setup, teardown),
        cmocka_unit_test_setup_teardown(test_self_map_two_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wide_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_page_crossing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_target_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_exhaustion_logdirty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_root_switch_at_floor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_without_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refcount_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandoned_table_written, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_written_during_write_protect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_writer_loop, setup, teardown),
    };
    return cmocka_run_group_tests_name("shadow_hostile", tests, NULL, NULL);
}

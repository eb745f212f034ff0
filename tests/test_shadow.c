/*
 * tests/test_shadow.c - shadow paging: hand-built guest tables in guest memory, faults and
 * their exact error codes, shadows checked by a small walker over the shadow tables,
 * emulated PTE writes, p2m changes zapping shadow leaves, the pool under pressure, and the
 * hostile classes (wide and page-crossing writes, the target removed before the write),
 * log-dirty's re-protection of shadow leaves (I14), the statistics. Every scenario ends with
 * a clean audit.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include "harness.h"
#include "shadow-internal.h"

static mv_host_t *h;
static struct th_platform *tp;

#define PTE_P 0x1ull
#define PTE_W 0x2ull
#define PTE_U 0x4ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull
#define PTE_NX (1ull << 63)

/* Guest layout: L4 at gfn 1, L3 at 2, L2 at 3, L1 at 4; data from gfn 16. */
#define G_L4 1
#define G_L3 2
#define G_L2 3
#define G_L1 4
#define VA_BASE 0x400000ull /* L4[0] L3[0] L2[2] */

static int setup(void **state)
{
    (void)state;
    h = th_host_create(512 * TH_MiB, NULL, &tp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_host_destroy(h, tp);
    return 0;
}

static mv_domain_t *make_dom(uint32_t id)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = id, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_SHADOW, .nr_vcpus = 2,
                                 .max_pages = 8192, .node_affinity = MV_NODE_ANY};
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    for (mv_gfn_t g = 0; g < 4096; g += 512) {
        uint64_t done;
        int rc;
        do
            rc = mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done);
        while (rc == MV_EAGAIN);
        assert_int_equal(rc, 0);
    }
    return d;
}

static void kill_dom(mv_domain_t *d)
{
    th_assert_audit_clean(h);
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    th_assert_audit_clean(h);
}

static void gput(mv_domain_t *d, mv_gfn_t table, unsigned idx, uint64_t e)
{
    assert_int_equal(mv_guest_phys_write(d, (table << 12) + 8 * idx, &e, 8), 0);
}

static uint64_t gget(mv_domain_t *d, mv_gfn_t table, unsigned idx)
{
    uint64_t e;
    assert_int_equal(mv_guest_phys_read(d, (table << 12) + 8 * idx, &e, 8), 0);
    return e;
}

/* The standard tree: VA_BASE + i*4K -> gfn 16 + i (i < 64), user, writable. */
static void build_tree(mv_domain_t *d)
{
    gput(d, G_L4, 0, (G_L3 << 12) | PTE_P | PTE_W | PTE_U);
    gput(d, G_L3, 0, (G_L2 << 12) | PTE_P | PTE_W | PTE_U);
    gput(d, G_L2, 2, (G_L1 << 12) | PTE_P | PTE_W | PTE_U);
    for (unsigned i = 0; i < 64; i++)
        gput(d, G_L1, i, ((16ull + i) << 12) | PTE_P | PTE_W | PTE_U);
}

static mv_mfn_t mfn_of(mv_domain_t *d, mv_gfn_t gfn)
{
    struct mv_p2m_entry e;
    assert_int_equal(mv_p2m_lookup(d, gfn, &e), 0);
    return e.mfn;
}

/* The test's own walker over the shadow tables: 0 not present, else leaf | rights. */
struct sw {
    bool present;
    mv_mfn_t mfn;
    bool w, u, nx;
};
static struct sw swalk(mv_paddr_t root, uint64_t va)
{
    struct sw r = {.w = true, .u = true};
    uint64_t t = root;
    for (int lv = 3; lv >= 0; lv--) {
        const uint64_t *tab = mv_frame_va(h, t >> 12);
        assert_non_null(tab);
        uint64_t e = tab[(va >> (12 + 9 * lv)) & 511];
        if (!(e & PTE_P))
            return (struct sw){0};
        assert_false(lv > 0 && (e & PTE_PS)); /* shadows use 4 KiB leaves only */
        r.w &= (e & PTE_W) != 0;
        r.u &= (e & PTE_U) != 0;
        r.nx |= (e & PTE_NX) != 0;
        t = e & X86E_ADDR;
    }
    r.present = true;
    r.mfn = t >> 12;
    return r;
}

static uint32_t fault(mv_vcpu_t *v, uint64_t va, uint32_t ec, uint32_t acc, uint32_t *code)
{
    struct mv_shadow_outcome o;
    assert_int_equal(mv_shadow_page_fault(v, va, ec, acc, &o), 0);
    if (code)
        *code = o.error_code;
    return o.kind;
}

static void set_regs(mv_vcpu_t *v, uint64_t cr0_clear, uint64_t cr4_set, uint64_t efer_set)
{
    struct mv_vcpu_state st = {.size = sizeof(st)};
    assert_int_equal(mv_vcpu_get_state(v, &st), 0);
    st.cr0 &= ~cr0_clear;
    st.cr4 |= cr4_set;
    st.efer |= efer_set;
    st.cr3 = G_L4 << 12;
    assert_int_equal(mv_vcpu_set_state(v, &st), 0);
}

/* ---- Scenarios ------------------------------------------------------------------------- */

static void test_fault_builds_leaf(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(1);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    assert_false(swalk(root, VA_BASE).present);

    /* A user read: fixed, leaf read-only until the dirty bit is set; A set in every level. */
    assert_int_equal(fault(v, VA_BASE + 5 * 4096, MV_PFEC_U, 0, NULL), MV_SHADOW_FIXED);
    struct sw r = swalk(root, VA_BASE + 5 * 4096);
    assert_true(r.present);
    assert_int_equal(r.mfn, mfn_of(d, 21));
    assert_false(r.w);
    assert_true(r.u);
    assert_true(gget(d, G_L4, 0) & PTE_A);
    assert_true(gget(d, G_L1, 5) & PTE_A);
    assert_false(gget(d, G_L1, 5) & PTE_D);

    /* A write: dirty set, leaf writable. */
    assert_int_equal(fault(v, VA_BASE + 5 * 4096, MV_PFEC_U | MV_PFEC_W | MV_PFEC_P, 0, NULL),
                     MV_SHADOW_FIXED);
    assert_true(gget(d, G_L1, 5) & PTE_D);
    r = swalk(root, VA_BASE + 5 * 4096);
    assert_true(r.present && r.w);

    /* The same root comes back for the same CR3; the guest tables are read-only frames. */
    mv_paddr_t root2;
    assert_int_equal(mv_shadow_set_cr3(mv_domain_vcpu(d, 1), G_L4 << 12, &root2), 0);
    assert_int_equal(root, root2);
    struct mv_shadow_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    assert_int_equal(st.shadows[SH_L4], 1);
    assert_int_equal(st.shadows[SH_L1], 1);
    assert_int_equal(st.faults[MV_SHADOW_FIXED], 2);
    kill_dom(d);
}

/* The engine's own writes to guest memory (mv_guest_phys_write) keep shadows exact too. */
static void test_phys_write_revalidates(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(10);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(fault(v, VA_BASE + i * 4096ull, MV_PFEC_U, 0, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(root, VA_BASE + 4096).present);
    /* One entry cleared, one moved to another frame, written as 16 bytes at once. */
    uint64_t two[2] = {0, (40ull << 12) | PTE_P | PTE_W | PTE_U | PTE_A};
    assert_int_equal(mv_guest_phys_write(d, (G_L1 << 12) + 8, two, sizeof(two)), 0);
    assert_false(swalk(root, VA_BASE + 4096).present);
    struct sw r = swalk(root, VA_BASE + 2 * 4096);
    assert_true(!r.present || r.mfn == mfn_of(d, 40));
    assert_int_equal(fault(v, VA_BASE + 2 * 4096ull, MV_PFEC_U, 0, NULL), MV_SHADOW_FIXED);
    assert_int_equal(swalk(root, VA_BASE + 2 * 4096).mfn, mfn_of(d, 40));
    assert_int_equal(fault(v, VA_BASE + 4096, MV_PFEC_U, 0, NULL), MV_SHADOW_INJECT);
    /* An upper entry removed the same way takes the whole subtree out of the shadow. */
    gput(d, G_L2, 2, 0);
    assert_false(swalk(root, VA_BASE).present);
    kill_dom(d);
}

/* Shadow frames are the engine's: no guest can map, reference or write them (XSA-248). */
static void test_shadow_frames_unmappable(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(11);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    assert_int_equal(fault(v, VA_BASE, MV_PFEC_U | MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    mv_mfn_t sroot = root >> 12;
    /* The frame and a shadow L1 below it, found with the test's walker. */
    const uint64_t *t = mv_frame_va(h, sroot);
    mv_mfn_t sl3 = (t[0] & X86E_ADDR) >> 12;
    uint8_t before[4096];
    memcpy(before, mv_frame_va(h, sroot), sizeof(before));
    struct mv_page_info pi = {.size = sizeof(pi)};
    assert_int_equal(mv_page_info(h, sroot, &pi), 0);
    assert_true(pi.owner > MV_DOMID_MAX); /* the engine's */
    mv_mfn_t frames[2] = {sroot, sl3};
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(mv_page_get(d, frames[i]), MV_EPERM);
        assert_int_equal(mv_p2m_set_entry(d, 3000, frames[i], 0, MV_P2M_RAM_RW, MV_P2M_RWX),
                         MV_EPERM);
    }
    /* A guest entry naming the shadow frame's number as a gfn reaches guest RAM or nothing. */
    gput(d, G_L1, 9, (sroot << 12) | PTE_P | PTE_W | PTE_U);
    struct mv_shadow_outcome o;
    assert_int_equal(mv_shadow_page_fault(v, VA_BASE + 9 * 4096, MV_PFEC_U, 0, &o), 0);
    struct sw r = swalk(root, VA_BASE + 9 * 4096);
    struct mv_p2m_entry pe;
    if (mv_p2m_lookup(d, sroot, &pe) == 0 && pe.type == MV_P2M_RAM_RW)
        assert_true(r.present && r.mfn == pe.mfn && r.mfn != sroot);
    else
        assert_true(!r.present && o.kind == MV_SHADOW_MMIO);
    assert_memory_equal(before, mv_frame_va(h, sroot), 8); /* the root's entry 0 unchanged */
    kill_dom(d);
}

/*
 * Page tables in read-only guest memory (ram_ro): the accessed and dirty bits the walk
 * cannot write are dropped and the access goes on; the fault is fixed, not retried for ever.
 */
static void test_tables_in_rom(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(12);
    build_tree(d);
    gput(d, G_L1, 0, (16ull << 12) | PTE_P | PTE_W | PTE_U); /* A and D clear */
    uint64_t done;
    assert_int_equal(mv_p2m_change_type_range(d, G_L1, 1, MV_P2M_RAM_RW, MV_P2M_RAM_RO, &done),
                     0);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    assert_int_equal(fault(v, VA_BASE, MV_PFEC_U, 0, NULL), MV_SHADOW_FIXED);
    struct sw r = swalk(root, VA_BASE);
    assert_true(r.present);
    assert_int_equal(r.mfn, mfn_of(d, 16));
    assert_false(gget(d, G_L1, 0) & PTE_A); /* the table is read-only: nothing written */
    assert_int_equal(fault(v, VA_BASE, MV_PFEC_U | MV_PFEC_W | MV_PFEC_P, 0, NULL),
                     MV_SHADOW_FIXED);
    r = swalk(root, VA_BASE);
    assert_true(r.present && r.w);
    assert_false(gget(d, G_L1, 0) & PTE_D);
    kill_dom(d);
}

static void test_error_codes(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(2);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    uint32_t ec;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);

    /* Not present (L1 entry 100): P clear, W/U as the access. */
    assert_int_equal(fault(v, VA_BASE + 100 * 4096, MV_PFEC_W | MV_PFEC_U, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_W | MV_PFEC_U);
    /* Not present at L4. */
    assert_int_equal(fault(v, 1ull << 39, 0, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, 0);
    /* A fetch without NXE or SMEP: no I/D bit. */
    assert_int_equal(fault(v, 1ull << 39, MV_PFEC_ID, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, 0);

    /* Reserved bit (bit 45, beyond the 40-bit width) in an L1 entry. */
    gput(d, G_L1, 1, (17ull << 12) | PTE_P | PTE_W | PTE_U | (1ull << 45));
    assert_int_equal(fault(v, VA_BASE + 4096, MV_PFEC_U, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_RSVD | MV_PFEC_U);
    /* NX is reserved without NXE. */
    gput(d, G_L1, 2, (18ull << 12) | PTE_P | PTE_W | PTE_U | PTE_NX);
    assert_int_equal(fault(v, VA_BASE + 2 * 4096, 0, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_RSVD);

    /* With NXE: a fetch from the NX page gets P|ID; a read is fine. */
    set_regs(v, 0, 0, MV_EFER_NXE);
    assert_int_equal(fault(v, VA_BASE + 2 * 4096, MV_PFEC_ID | MV_PFEC_U, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_ID | MV_PFEC_U);
    assert_int_equal(fault(v, VA_BASE + 2 * 4096, MV_PFEC_U, 0, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(root, VA_BASE + 2 * 4096).nx);

    /* A user read of a supervisor page. */
    gput(d, G_L1, 3, (19ull << 12) | PTE_P | PTE_W);
    assert_int_equal(fault(v, VA_BASE + 3 * 4096, MV_PFEC_U, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_U);

    /* SMEP: a supervisor fetch from a user page. SMAP: a supervisor read without AC. */
    set_regs(v, 0, MV_CR4_SMEP | MV_CR4_SMAP, MV_EFER_NXE);
    assert_int_equal(fault(v, VA_BASE + 4 * 4096, MV_PFEC_ID, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_ID);
    assert_int_equal(fault(v, VA_BASE + 4 * 4096, 0, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P);
    assert_int_equal(fault(v, VA_BASE + 4 * 4096, 0, MV_SHADOW_ACC_AC | MV_SHADOW_ACC_IMPLICIT, &ec),
                     MV_SHADOW_INJECT);
    assert_int_equal(fault(v, VA_BASE + 4 * 4096, 0, MV_SHADOW_ACC_AC, NULL), MV_SHADOW_FIXED);

    /* A supervisor write to a read-only page: #PF with WP, emulated without. */
    gput(d, G_L1, 6, (22ull << 12) | PTE_P);
    assert_int_equal(fault(v, VA_BASE + 6 * 4096, MV_PFEC_W, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_W);
    set_regs(v, MV_CR0_WP, 0, 0);
    assert_int_equal(fault(v, VA_BASE + 6 * 4096, MV_PFEC_W, 0, NULL), MV_SHADOW_EMULATE);

    /* The emulator's walk agrees. */
    mv_paddr_t gpa;
    assert_int_equal(mv_shadow_gva_to_gpa(v, VA_BASE + 7 * 4096 + 12, 0, MV_SHADOW_ACC_AC, &gpa, &ec), 0);
    assert_int_equal(gpa, (23ull << 12) + 12);
    assert_int_equal(mv_shadow_gva_to_gpa(v, VA_BASE + 100 * 4096, MV_PFEC_W, 0, &gpa, &ec),
                     MV_EFAULT);
    assert_int_equal(ec, MV_PFEC_W);
    kill_dom(d);
}

static void test_superpages(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(3);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    /* L2[4]: a 2 MiB page at gfn 1024; L3[1]: 1 GiB at gfn 0 (offered below). */
    gput(d, G_L2, 4, (1024ull << 12) | PTE_P | PTE_W | PTE_PS);
    gput(d, G_L3, 1, PTE_P | PTE_W | PTE_PS);
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    uint64_t va = (4ull << 21) + 7 * 4096;
    assert_int_equal(fault(v, va, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    struct sw r = swalk(root, va);
    assert_true(r.present && r.w && !r.u);
    assert_int_equal(r.mfn, mfn_of(d, 1031));
    assert_true(gget(d, G_L2, 4) & PTE_D);
    /* A misaligned 2 MiB frame is a reserved-bit fault. */
    gput(d, G_L2, 5, (1026ull << 12) | PTE_P | PTE_PS);
    uint32_t ec;
    assert_int_equal(fault(v, 5ull << 21, 0, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_RSVD);
    /* 1 GiB without the feature: reserved; with it: splintered twice. */
    assert_int_equal(fault(v, (1ull << 30) + 0x3000, 0, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_RSVD);
    struct mv_vcpu_state st = {.size = sizeof(st)};
    mv_vcpu_get_state(v, &st);
    st.flags = MV_VCPUF_GBPAGES;
    assert_int_equal(mv_vcpu_set_state(v, &st), 0);
    assert_int_equal(fault(v, (1ull << 30) + (1ull << 21) + 0x3000, 0, 0, NULL), MV_SHADOW_FIXED);
    r = swalk(root, (1ull << 30) + (1ull << 21) + 0x3000);
    assert_true(r.present && !r.w); /* dirty clear: read-only */
    assert_int_equal(r.mfn, mfn_of(d, 512 + 3));
    /* Through the 1 GiB page the guest tables are read-only even on a write. */
    assert_int_equal(fault(v, (1ull << 30) + G_L2 * 4096, MV_PFEC_W, 0, NULL), MV_SHADOW_EMULATE);
    kill_dom(d);
}

static void test_emulated_pte_writes(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(4);
    build_tree(d);
    /* The guest maps its own L1 at VA_BASE + 63 pages. */
    gput(d, G_L1, 63, (G_L1 << 12) | PTE_P | PTE_W | PTE_U | PTE_A | PTE_D);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    assert_int_equal(fault(v, VA_BASE, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(root, VA_BASE).w);
    /* A write to the table through its self-map: emulate; the self-map is read-only. */
    struct mv_shadow_outcome o;
    assert_int_equal(mv_shadow_page_fault(v, VA_BASE + 63 * 4096, MV_PFEC_W, 0, &o), 0);
    assert_int_equal(o.kind, MV_SHADOW_EMULATE);
    assert_int_equal(o.gpa, G_L1 << 12);
    assert_int_equal(fault(v, VA_BASE + 63 * 4096, 0, 0, NULL), MV_SHADOW_FIXED);
    struct sw r = swalk(root, VA_BASE + 63 * 4096);
    assert_true(r.present && !r.w);

    /* Emulated write of entry 0: the shadow follows to the new frame at once. */
    uint64_t e = (40ull << 12) | PTE_P | PTE_W | PTE_U | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, &e, 8), 0);
    r = swalk(root, VA_BASE);
    assert_true(r.present && r.w);
    assert_int_equal(r.mfn, mfn_of(d, 40));
    /* Clearing A makes it not present; a 4-byte write of the low half is revalidated too. */
    uint32_t lo = (uint32_t)((41ull << 12) | PTE_P | PTE_U | PTE_A);
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, &lo, 4), 0);
    r = swalk(root, VA_BASE);
    assert_true(r.present && !r.w);
    assert_int_equal(r.mfn, mfn_of(d, 41));
    /* A 16-byte write covering two entries: both revalidated (no width assumed). */
    assert_int_equal(fault(v, VA_BASE + 4096, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    uint64_t two[2] = {0, (50ull << 12) | PTE_P | PTE_A};
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, two, 16), 0);
    assert_false(swalk(root, VA_BASE).present);
    r = swalk(root, VA_BASE + 4096);
    assert_true(r.present && !r.w && !r.u);
    assert_int_equal(r.mfn, mfn_of(d, 50));
    /* Pointing an entry at another guest table: mapped read-only. */
    e = (G_L2 << 12) | PTE_P | PTE_W | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + 8 * 9, &e, 8), 0);
    r = swalk(root, VA_BASE + 9 * 4096);
    assert_true(r.present && !r.w);
    /* cmpxchg: mismatch leaves memory alone and reports the value. */
    uint64_t exp = 0;
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 8 * 9, &exp, 0, 8), MV_EAGAIN);
    assert_int_equal(exp, e);
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 8 * 9, &exp, 0, 8), 0);
    assert_false(swalk(root, VA_BASE + 9 * 4096).present);
    /* An upper entry rewritten: the L2 entry now points nowhere shadowed, so not present. */
    e = (60ull << 12) | PTE_P | PTE_W | PTE_U | PTE_A;
    assert_int_equal(mv_shadow_emulate_write(v, (G_L2 << 12) + 16, &e, 8), 0);
    assert_false(swalk(root, VA_BASE + 4096).present);
    /* INVLPG drops a leaf. */
    e = (G_L1 << 12) | PTE_P | PTE_W | PTE_U | PTE_A;
    assert_int_equal(mv_shadow_emulate_write(v, (G_L2 << 12) + 16, &e, 8), 0);
    assert_int_equal(fault(v, VA_BASE + 20 * 4096, 0, 0, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(root, VA_BASE + 20 * 4096).present);
    assert_int_equal(mv_shadow_invlpg(v, VA_BASE + 20 * 4096), 0);
    assert_false(swalk(root, VA_BASE + 20 * 4096).present);
    kill_dom(d);
}

static struct mv_shadow_stats stats(mv_domain_t *d)
{
    struct mv_shadow_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    return st;
}

/*
 * A page table copied over or filled as data in one write of 64 entries or more (a
 * string copy: the frame reused, or zeroed to serve anew): its shadows go instead of 512
 * revalidations, and a walk through it shadows it again. A shorter write is revalidated
 * in place, and a root a vCPU runs on stays and follows a bulk write.
 */
static void test_bulk_write_unshadows(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(5);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    assert_int_equal(fault(v, VA_BASE, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(root, VA_BASE).present);
    struct mv_shadow_stats st0 = stats(d);
    assert_int_equal(st0.shadows[1], 1);

    static uint64_t page[512];
    for (unsigned i = 0; i < 512; i++)
        page[i] = ((100ull + i) << 12) | PTE_P | PTE_W | PTE_U | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, page, sizeof page), 0);
    struct mv_shadow_stats st = stats(d);
    assert_int_equal(st.unshadowed_early, st0.unshadowed_early + 1);
    assert_int_equal(st.shadows[1], 0);
    assert_false(swalk(root, VA_BASE).present); /* the L2 entry went with the L1 */
    for (unsigned i = 0; i < 512; i += 97)
        assert_int_equal(gget(d, G_L1, i), page[i]);
    /* Walked again: shadowed again, with what the write put there. */
    assert_int_equal(fault(v, VA_BASE + 5 * 4096, 0, 0, NULL), MV_SHADOW_FIXED);
    struct sw r = swalk(root, VA_BASE + 5 * 4096);
    assert_true(r.present);
    assert_int_equal(r.mfn, mfn_of(d, 105));
    assert_int_equal(stats(d).shadows[1], 1);

    /* 63 entries: below the threshold, revalidated in place (the leaf follows at once). */
    for (unsigned i = 0; i < 63; i++)
        page[i] = ((200ull + i) << 12) | PTE_P | PTE_W | PTE_U | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, page, 63 * 8), 0);
    assert_int_equal(stats(d).shadows[1], 1);
    r = swalk(root, VA_BASE + 5 * 4096);
    assert_true(r.present);
    assert_int_equal(r.mfn, mfn_of(d, 205));

    /* The root the vCPU runs on, rewritten whole with what it holds: it stays. */
    static uint64_t l4[512];
    assert_int_equal(mv_guest_phys_read(d, G_L4 << 12, l4, sizeof l4), 0);
    assert_int_equal(mv_shadow_emulate_write(v, G_L4 << 12, l4, sizeof l4), 0);
    assert_int_equal(stats(d).shadows[4], 1);
    assert_int_equal(fault(v, VA_BASE + 6 * 4096, 0, 0, NULL), MV_SHADOW_FIXED);
    r = swalk(root, VA_BASE + 6 * 4096);
    assert_true(r.present);
    assert_int_equal(r.mfn, mfn_of(d, 206));
    kill_dom(d);
}

static void test_hostile_writes(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(5);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    assert_int_equal(fault(v, VA_BASE, 0, 0, NULL), MV_SHADOW_FIXED);
    uint8_t buf[8200] = {0};
    uint64_t before = gget(d, G_L1, 511);
    /* Crossing a page, longer than a page, empty: refused, nothing written (XSA-477). */
    assert_int_equal(mv_shadow_emulate_write(v, (G_L1 << 12) + 4092, buf, 8), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, buf, 4097), MV_EINVAL);
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, buf, 0), MV_EINVAL);
    assert_int_equal(gget(d, G_L1, 511), before);
    uint64_t exp = 0;
    assert_int_equal(mv_shadow_emulate_cmpxchg(v, (G_L1 << 12) + 4, &exp, 1, 8), MV_EINVAL);
    /* A whole-page write is fine: every entry revalidated, all gone. */
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, buf, 4096), 0);
    assert_false(swalk(root, VA_BASE).present);
    th_assert_audit_clean(h);

    /* The target frame removed between fault and write (XSA-219): refused. */
    mv_gfn_t g = 3000;
    uint64_t done;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0);
    assert_int_equal(mv_shadow_emulate_write(v, g << 12, buf, 8), MV_EFAULT);
    /* Entries naming gfns with no RAM: the fault says mmio, nothing is shadowed. */
    uint64_t e = (3000ull << 12) | PTE_P | PTE_W | PTE_A | PTE_D;
    assert_int_equal(mv_shadow_emulate_write(v, G_L1 << 12, &e, 8), 0);
    assert_false(swalk(root, VA_BASE).present);
    assert_int_equal(fault(v, VA_BASE, 0, 0, NULL), MV_SHADOW_MMIO);
    /* A table beyond guest RAM: treated as a reserved-bit walk failure. */
    e = (0x12345ull << 12) | PTE_P | PTE_W | PTE_A;
    assert_int_equal(mv_shadow_emulate_write(v, (G_L2 << 12) + 8 * 7, &e, 8), 0);
    uint32_t ec;
    assert_int_equal(fault(v, 7ull << 21, 0, 0, &ec), MV_SHADOW_INJECT);
    assert_int_equal(ec, MV_PFEC_P | MV_PFEC_RSVD);
    kill_dom(d);
}

static void test_p2m_changes_zap(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(6);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    for (unsigned i = 0; i < 64; i++)
        assert_int_equal(fault(v, VA_BASE + i * 4096, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    /* decrease_reservation of a mapped gfn zaps its leaf. */
    mv_gfn_t g = 16 + 10;
    uint64_t done;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0);
    assert_false(swalk(root, VA_BASE + 10 * 4096).present);
    assert_true(swalk(root, VA_BASE + 11 * 4096).present);
    assert_int_equal(fault(v, VA_BASE + 10 * 4096, 0, 0, NULL), MV_SHADOW_MMIO);
    th_assert_audit_clean(h);
    /* Log-dirty: leaves lose write access; a write is fixed and marked dirty. */
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    assert_false(swalk(root, VA_BASE + 12 * 4096).present);
    assert_int_equal(fault(v, VA_BASE + 12 * 4096, 0, 0, NULL), MV_SHADOW_FIXED);
    assert_false(swalk(root, VA_BASE + 12 * 4096).w);
    assert_int_equal(fault(v, VA_BASE + 12 * 4096, MV_PFEC_W | MV_PFEC_P, 0, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(root, VA_BASE + 12 * 4096).w);
    th_assert_audit_clean(h);
    uint64_t bm[64] = {0}, dirty;
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, 4096, bm, 4096, &done, &dirty), 0);
    assert_true(bm[28 / 64] & (1ull << (28 % 64)));
    assert_false(swalk(root, VA_BASE + 12 * 4096).w);
    assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    /* The guest's L1 frame removed: its shadow goes with it. */
    g = G_L1;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0);
    assert_false(swalk(root, VA_BASE + 11 * 4096).present);
    struct mv_shadow_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    assert_int_equal(st.shadows[SH_L1], 0);
    kill_dom(d);
}

static void test_pool_pressure(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(7);
    assert_int_equal(mv_shadow_set_budget(d, 8), MV_EINVAL); /* below the floor */
    assert_int_equal(mv_shadow_set_budget(d, 40), 0);
    /* 64 L1 tables (gfns 100..163) under one L2, each mapping 4 pages. */
    gput(d, G_L4, 0, (G_L3 << 12) | PTE_P | PTE_W);
    gput(d, G_L3, 0, (G_L2 << 12) | PTE_P | PTE_W);
    for (unsigned t = 0; t < 64; t++) {
        gput(d, G_L2, t, ((100ull + t) << 12) | PTE_P | PTE_W);
        for (unsigned i = 0; i < 4; i++)
            gput(d, 100 + t, i, ((200ull + 4 * t + i) << 12) | PTE_P | PTE_W);
    }
    mv_vcpu_t *v0 = mv_domain_vcpu(d, 0), *v1 = mv_domain_vcpu(d, 1);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v0, G_L4 << 12, &root), 0);
    assert_int_equal(mv_shadow_set_cr3(v1, G_L4 << 12, &root), 0);
    assert_int_equal(mv_shadow_set_budget(d, 64), MV_EBUSY);
    for (int round = 0; round < 3; round++)
        for (unsigned t = 0; t < 64; t++)
            for (unsigned i = 0; i < 4; i++) {
                uint64_t va = ((uint64_t)t << 21) + i * 4096ull;
                mv_vcpu_t *v = (t + i) & 1 ? v1 : v0;
                assert_int_equal(fault(v, va, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
                struct sw r = swalk(root, va);
                assert_true(r.present && r.w);
                assert_int_equal(r.mfn, mfn_of(d, 200 + 4 * t + i));
            }
    struct mv_shadow_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    assert_true(st.evictions > 0);
    assert_true(st.pool_frames <= 40);
    th_assert_audit_clean(h);
    /* Log-dirty on while the pool is full (XSA-427 class): still only fixes. */
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    for (unsigned t = 0; t < 64; t++)
        assert_int_equal(fault(v0, (uint64_t)t << 21, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    th_assert_audit_clean(h);
    assert_int_equal(mv_shadow_blow(d), 0);
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    assert_int_equal(st.shadows[SH_L4], 1);
    assert_int_equal(st.shadows[SH_L1], 0);
    kill_dom(d);
}

static void test_refusals(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(8);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, 5000ull << 12, &root), MV_EFAULT);
    assert_int_equal(mv_shadow_set_cr3(v, 1ull << 45, &root), MV_EINVAL);
    assert_int_equal(mv_shadow_set_cr3(NULL, 0, &root), MV_EINVAL);
    struct mv_shadow_outcome o;
    assert_int_equal(mv_shadow_page_fault(v, 0, 0, 0x80, &o), MV_EINVAL);
    /* A HAP domain has no shadow state. */
    struct mv_domain_config c = {.size = sizeof(c), .domid = 9, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 1, .max_pages = 16,
                                 .node_affinity = MV_NODE_ANY};
    mv_domain_t *hap;
    assert_int_equal(mv_domain_create(h, &c, &hap), 0);
    assert_int_equal(mv_shadow_set_cr3(mv_domain_vcpu(hap, 0), 0, &root), MV_EINVAL);
    kill_dom(hap);
    /* The pool's budget in the config: only for shadow domains, never below the floor. */
    c.shadow_pool_pages = 64;
    assert_int_equal(mv_domain_create(h, &c, &hap), MV_EINVAL);
    c.paging = MV_PAGING_SHADOW;
    c.nr_vcpus = 8;
    c.shadow_pool_pages = 8 * MV_SHADOW_FLOOR_PER_VCPU - 1;
    assert_int_equal(mv_domain_create(h, &c, &hap), MV_EINVAL);
    c.shadow_pool_pages = (uint64_t)MV_SHADOW_POOL_MAX + 1;
    assert_int_equal(mv_domain_create(h, &c, &hap), MV_EINVAL);
    c.shadow_pool_pages = 8 * MV_SHADOW_FLOOR_PER_VCPU;
    assert_int_equal(mv_domain_create(h, &c, &hap), 0);
    struct mv_shadow_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_shadow_stats(hap, &st), 0);
    assert_int_equal(st.budget, 8 * MV_SHADOW_FLOOR_PER_VCPU);
    kill_dom(hap);
    kill_dom(d);
}

/*
 * I14 for shadow leaves: peek-and-clean takes write access away from every shadow leaf of
 * the pages it cleans, so the guest's next write to each faults, is logged and shows up in
 * the next round; and a writable leaf onto a page whose dirty bit is clear is what the
 * audit reports.
 */
static void test_logdirty_reprotects(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(10);
    build_tree(d);
    mv_vcpu_t *v[2] = {mv_domain_vcpu(d, 0), mv_domain_vcpu(d, 1)};
    mv_paddr_t root, root1;
    assert_int_equal(mv_shadow_set_cr3(v[0], G_L4 << 12, &root), 0);
    assert_int_equal(mv_shadow_set_cr3(v[1], G_L4 << 12, &root1), 0);
    assert_int_equal(root, root1);
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    uint64_t bm[4096 / 64], done, dirty;
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, 4096, bm, 4096, &done, &dirty), 0);
    for (unsigned round = 0; round < 4; round++) {
        struct mv_shadow_stats st0 = {.size = sizeof(st0)}, st1 = {.size = sizeof(st1)};
        assert_int_equal(mv_shadow_stats(d, &st0), 0);
        unsigned nwritten = 0;
        for (unsigned i = 0; i < 8; i++) {
            if ((i + round) % 3 == 0)
                continue;
            /* The hardware: a fault only when the leaf does not allow the write. */
            uint64_t va = VA_BASE + i * 4096ull;
            if (!swalk(root, va).w)
                assert_int_equal(fault(v[i & 1], va, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
            struct sw r = swalk(root, va);
            assert_true(r.present && r.w);
            __atomic_store_n((uint64_t *)mv_frame_va(h, r.mfn), round + 1, __ATOMIC_RELAXED);
            nwritten++;
        }
        /* Every write faulted once: the previous clean had re-protected every leaf. */
        assert_int_equal(mv_shadow_stats(d, &st1), 0);
        assert_int_equal(st1.faults[MV_SHADOW_FIXED] - st0.faults[MV_SHADOW_FIXED], nwritten);
        th_assert_audit_clean(h); /* writable leaves, each onto a dirty page */
        assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, 4096, bm, 4096, &done, &dirty), 0);
        for (unsigned i = 0; i < 8; i++) {
            mv_gfn_t g = 16 + i;
            assert_int_equal((bm[g / 64] >> (g % 64)) & 1, (i + round) % 3 != 0);
            assert_false(swalk(root, VA_BASE + i * 4096ull).w);
        }
        th_assert_audit_clean(h);
    }

    /* The check itself: a writable leaf onto gfn 16, then its dirty bit lost. */
    assert_int_equal(fault(v[0], VA_BASE, MV_PFEC_W, 0, NULL), MV_SHADOW_FIXED);
    assert_true(swalk(root, VA_BASE).w);
    th_assert_audit_clean(h);
    struct mv_p2m *p = p2m_of(d);
    _Atomic uint64_t *words = (_Atomic uint64_t *)mv_frame_va(h, p->ld_dir[16 / LD_CHUNK_GFNS]);
    uint64_t bit = 1ull << (16 % 64);
    atomic_fetch_and(&words[(16 % LD_CHUNK_GFNS) / 64], ~bit);
    assert_true(th_audit_has(h, "shadow-writable-but-clean"));
    atomic_fetch_or(&words[(16 % LD_CHUNK_GFNS) / 64], bit);
    th_assert_audit_clean(h);
    assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    kill_dom(d);
}

static uint64_t owned_pages(mv_domain_t *d)
{
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    return ds.pages;
}

/* bytes_per_gib: pool frames and their entry metadata over the guest memory owned. */
static void test_bytes_per_gib(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(11);
    struct mv_shadow_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    assert_int_equal(st.pool_frames, 0);
    assert_int_equal(st.bytes_per_gib, 0);
    build_tree(d);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, G_L4 << 12, &root), 0);
    for (unsigned i = 0; i < 64; i++)
        assert_int_equal(fault(v, VA_BASE + i * 4096ull, 0, 0, NULL), MV_SHADOW_FIXED);
    const uint64_t per_frame = 4096 + 512 * sizeof(struct sh_node);
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    assert_true(st.pool_frames > 0);
    assert_int_equal(owned_pages(d), 4096);
    /* 16 MiB of guest: a GiB is 64 times as much. */
    assert_int_equal(st.bytes_per_gib, st.pool_frames * per_frame * 64);
    /* Those bytes are charged to the domain as overhead. */
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_true(ds.overhead_pages * 4096 + ds.overhead_bytes >= st.pool_frames * per_frame);

    /* The same pool over half the memory: twice the bytes per GiB. */
    uint64_t done;
    for (mv_gfn_t g = 2048; g < 4096; g += 512)
        assert_int_equal(mv_decrease_reservation(d, &g, 1, 9, &done), 0);
    struct mv_shadow_stats st2 = {.size = sizeof(st2)};
    assert_int_equal(mv_shadow_stats(d, &st2), 0);
    assert_int_equal(st2.pool_frames, st.pool_frames);
    assert_int_equal(st2.bytes_per_gib, 2 * st.bytes_per_gib);

    /* A caller that knows the first layout only: its fields, nothing past its size. */
    union {
        struct mv_shadow_stats st;
        uint8_t raw[sizeof(struct mv_shadow_stats)];
    } old;
    memset(&old, 0xa5, sizeof(old));
    old.st.size = offsetof(struct mv_shadow_stats, bytes_per_gib);
    assert_int_equal(mv_shadow_stats(d, &old.st), 0);
    assert_int_equal(old.st.pool_frames, st.pool_frames);
    assert_int_equal(old.st.budget, st.budget);
    assert_int_equal(old.st.bytes_per_gib, 0xa5a5a5a5a5a5a5a5ull);
    old.st.size = offsetof(struct mv_shadow_stats, zapped);
    assert_int_equal(mv_shadow_stats(d, &old.st), MV_EINVAL);
    assert_int_equal(mv_shadow_stats(d, NULL), MV_EINVAL);

    /* Owning nothing: 0, however big the pool. */
    for (mv_gfn_t g = 0; g < 2048; g += 512)
        assert_int_equal(mv_decrease_reservation(d, &g, 1, 9, &done), 0);
    assert_int_equal(owned_pages(d), 0);
    assert_int_equal(mv_shadow_stats(d, &st2), 0);
    assert_true(st2.pool_frames > 0);
    assert_int_equal(st2.bytes_per_gib, 0);
    kill_dom(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_builds_leaf),
        cmocka_unit_test(test_phys_write_revalidates),
        cmocka_unit_test(test_shadow_frames_unmappable),
        cmocka_unit_test(test_tables_in_rom),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_superpages),
        cmocka_unit_test(test_emulated_pte_writes),
        cmocka_unit_test(test_bulk_write_unshadows),
        cmocka_unit_test(test_hostile_writes),
        cmocka_unit_test(test_p2m_changes_zap),
        cmocka_unit_test(test_pool_pressure),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_logdirty_reprotects),
        cmocka_unit_test(test_bytes_per_gib),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

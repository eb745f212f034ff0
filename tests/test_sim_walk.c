/*
 * tests/test_sim_walk.c - the simulator's hardware vCPU against hand-built tables.
 *
 * Every page-fault error-code case and every leaf size, in PV (machine-address tables,
 * walked from a root the test names) and HAP (guest tables by gpa through the EPT-format
 * p2m), each checked against the expected outcome and against the oracle; accessed and
 * dirty bits; EPT outcomes (holes, mmio, ram_ro, log-dirty); the TLB (a stale entry the
 * guest has not flushed is legal; global entries survive CR3 writes; an engine change that
 * reduced rights without a flush is caught); HAP log-dirty with A/D updates included.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "sim.h"

#define F_P MV_PTE_P
#define F_RW MV_PTE_RW
#define F_US MV_PTE_US
#define F_A MV_PTE_A
#define F_D MV_PTE_D
#define F_PS MV_PTE_PS
#define F_G MV_PTE_G
#define F_NX MV_PTE_NX
#define F_T (F_P | F_RW | F_US)

#define GUEST_PAGES 1024u

/* gfns of the standard tables and pages */
enum { G_L4 = 1, G_L3 = 2, G_L2 = 3, G_L1 = 4, G_L4B = 5, G_DATA = 16, G_DATA2 = 17 };
/* The standard va: L4 index 1, L3 2, L2 3, L1 4. */
#define VA ((1ull << 39) | (2ull << 30) | (3ull << 21) | (4ull << 12))

struct fx {
    mv_sim_t *s;
    mv_host_t *h;
    mv_domain_t *d, *other;
    mv_sim_vcpu_t *sv;
    bool hap;
};

static struct fx fx;

static mv_domain_t *make_domain(uint32_t id, bool hap)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = id,
                                 .type = hap ? MV_DOMAIN_HVM : MV_DOMAIN_PV,
                                 .paging = hap ? MV_PAGING_HAP : MV_PAGING_PV, .nr_vcpus = 2,
                                 .max_pages = GUEST_PAGES, .node_affinity = MV_NODE_ANY};
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(fx.h, &c, &d), 0);
    uint64_t done;
    for (mv_gfn_t g = 0; g < GUEST_PAGES; g++)
        assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    return d;
}

static void kill(mv_domain_t *d)
{
    int rc;
    mv_sim_detach(fx.s, d);
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
}

static mv_mfn_t mfn_of(mv_gfn_t g)
{
    struct mv_p2m_entry e;
    assert_int_equal(mv_p2m_lookup(fx.d, g, &e), 0);
    return e.mfn;
}

/* The address a table entry holds for gfn: gpa (HAP) or machine address (PV). */
static uint64_t addr(mv_gfn_t g)
{
    return fx.hap ? g << MV_PAGE_SHIFT : mfn_of(g) << MV_PAGE_SHIFT;
}

static uint64_t *tab(mv_gfn_t g)
{
    return mv_frame_va(fx.h, mfn_of(g));
}

static void set_state(uint64_t cr0, uint64_t cr4, uint64_t efer, uint32_t flags)
{
    struct mv_vcpu_state st = {.size = sizeof(st), .cr0 = cr0, .cr3 = G_L4 << MV_PAGE_SHIFT,
                               .cr4 = cr4, .efer = efer, .flags = flags};
    assert_int_equal(mv_vcpu_set_state(mv_sim_vcpu_engine(fx.sv), &st), 0);
    if (!fx.hap)
        mv_sim_set_root_override(fx.sv, mfn_of(G_L4));
}

#define CR0_STD (1ull | MV_CR0_WP | MV_CR0_PG)
#define CR4_STD (MV_CR4_PAE | MV_CR4_PGE)
#define EFER_STD (MV_EFER_LME | (1ull << 10) | MV_EFER_NXE)

/* The standard chain for VA, every level with `flags` (the leaf too), to G_DATA. */
static void build(uint64_t flags)
{
    memset(tab(G_L4), 0, MV_PAGE_SIZE);
    memset(tab(G_L3), 0, MV_PAGE_SIZE);
    memset(tab(G_L2), 0, MV_PAGE_SIZE);
    memset(tab(G_L1), 0, MV_PAGE_SIZE);
    tab(G_L4)[1] = addr(G_L3) | flags;
    tab(G_L3)[2] = addr(G_L2) | flags;
    tab(G_L2)[3] = addr(G_L1) | flags;
    tab(G_L1)[4] = addr(G_DATA) | flags;
    set_state(CR0_STD, CR4_STD, EFER_STD, 0);
    mv_sim_flush_tlb(fx.sv);
}

static void setup_mode(bool hap)
{
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 64 * TH_MiB};
    assert_int_equal(mv_sim_create(&c, &fx.s), 0);
    fx.h = mv_sim_host(fx.s);
    fx.hap = hap;
    fx.d = make_domain(1, hap);
    fx.other = make_domain(2, hap);
    assert_int_equal(mv_sim_attach(fx.s, fx.d), 0);
    assert_int_equal(mv_sim_attach(fx.s, fx.other), 0);
    fx.sv = mv_sim_vcpu(fx.s, fx.d, 0);
    assert_non_null(fx.sv);
}

static int setup_pv(void **state)
{
    (void)state;
    setup_mode(false);
    return 0;
}

static int setup_hap(void **state)
{
    (void)state;
    setup_mode(true);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_assert_audit_clean(fx.h);
    kill(fx.d);
    kill(fx.other);
    th_assert_audit_clean(fx.h);
    mv_sim_destroy(fx.s);
    memset(&fx, 0, sizeof(fx));
    return 0;
}

/* The access ends as expected through the vCPU, and the oracle says the same. */
static void expect(uint64_t va, uint32_t op, uint32_t flags, uint32_t kind, uint32_t code,
                   mv_mfn_t mfn, int line)
{
    struct mv_sim_result o, r;
    mv_sim_oracle(fx.sv, va, op, flags, &o);
    mv_sim_translate(fx.sv, va, op, flags, &r);
    if (r.kind != kind || (kind == MV_SIM_PAGE_FAULT && r.error_code != code) ||
        (kind == MV_SIM_OK && r.mfn != mfn) || !mv_sim_same(&r, &o))
        fail_msg("line %d (%s): vcpu %s code %#x mfn %#llx, oracle %s code %#x mfn %#llx; "
                 "expected %s code %#x mfn %#llx", line, fx.hap ? "hap" : "pv",
                 mv_sim_kind_name(r.kind), r.error_code, (unsigned long long)r.mfn,
                 mv_sim_kind_name(o.kind), o.error_code, (unsigned long long)o.mfn,
                 mv_sim_kind_name(kind), code, (unsigned long long)mfn);
}

#define OK_AT(va, op, fl, m) expect(va, op, fl, MV_SIM_OK, 0, m, __LINE__)
#define PF(va, op, fl, c) expect(va, op, fl, MV_SIM_PAGE_FAULT, c, 0, __LINE__)
#define R MV_SIM_READ
#define W MV_SIM_WRITE
#define X MV_SIM_FETCH
#define U MV_SIM_USER

static void error_codes(void)
{
    mv_mfn_t data = mfn_of(G_DATA);
    build(F_T);
    OK_AT(VA, R, 0, data);
    OK_AT(VA + 0x123, W, U, data);
    OK_AT(VA, X, U, data);

    /* Not present at each level: P clear; W, U, I/D (with NXE) from the access. */
    for (mv_gfn_t t = G_L4; t <= G_L1; t++) {
        unsigned idx = (unsigned)t;
        build(F_T);
        tab(t)[idx] &= ~F_P;
        PF(VA, R, 0, 0);
        PF(VA, W, U, MV_SIM_PF_W | MV_SIM_PF_U);
        PF(VA, X, 0, MV_SIM_PF_ID);
        /* Attacker-chosen bits in a not-present entry mean nothing. */
        tab(t)[idx] = 0xfff0000000000ffeull;
        PF(VA, R, U, MV_SIM_PF_U);
    }
    /* I/D only with NXE or SMEP. */
    build(F_T);
    tab(G_L1)[4] = 0;
    set_state(CR0_STD, CR4_STD, EFER_STD & ~MV_EFER_NXE, 0);
    PF(VA, X, 0, 0);
    set_state(CR0_STD, CR4_STD | MV_CR4_SMEP, EFER_STD & ~MV_EFER_NXE, 0);
    PF(VA, X, 0, MV_SIM_PF_ID);

    /* Reserved bits: address bits at and above the width (40), at every level. */
    for (mv_gfn_t t = G_L4; t <= G_L1; t++) {
        build(F_T);
        tab(t)[t] |= 1ull << 40;
        PF(VA, R, 0, MV_SIM_PF_P | MV_SIM_PF_RSVD);
        PF(VA, X, U, MV_SIM_PF_P | MV_SIM_PF_RSVD | MV_SIM_PF_U | MV_SIM_PF_ID);
    }
    /* NX without EFER.NXE is reserved; with it, a fetch is refused. */
    build(F_T);
    tab(G_L2)[3] |= F_NX;
    PF(VA, X, 0, MV_SIM_PF_P | MV_SIM_PF_ID);
    PF(VA, X, U, MV_SIM_PF_P | MV_SIM_PF_U | MV_SIM_PF_ID);
    OK_AT(VA, R, 0, data);
    set_state(CR0_STD, CR4_STD, EFER_STD & ~MV_EFER_NXE, 0);
    PF(VA, R, 0, MV_SIM_PF_P | MV_SIM_PF_RSVD);
    /* PS at L4 is reserved. */
    build(F_T);
    tab(G_L4)[1] |= F_PS;
    PF(VA, W, 0, MV_SIM_PF_P | MV_SIM_PF_RSVD | MV_SIM_PF_W);
    /* Software-available bits (9-11, 52-58) and protection-key bits are ignored. */
    build(F_T);
    for (mv_gfn_t t = G_L4; t <= G_L1; t++)
        tab(t)[t] |= (7ull << 9) | (0x7full << 52) | (0xfull << 59);
    OK_AT(VA, W, U, data);

    /* Rights: R/W and U/S at every level. */
    for (mv_gfn_t t = G_L4; t <= G_L1; t++) {
        build(F_T);
        tab(t)[t] &= ~F_RW;
        PF(VA, W, 0, MV_SIM_PF_P | MV_SIM_PF_W);           /* CR0.WP */
        PF(VA, W, U, MV_SIM_PF_P | MV_SIM_PF_W | MV_SIM_PF_U);
        OK_AT(VA, R, U, data);
        set_state(CR0_STD & ~MV_CR0_WP, CR4_STD, EFER_STD, 0);
        OK_AT(VA, W, 0, data);                              /* supervisor, WP clear */
        PF(VA, W, U, MV_SIM_PF_P | MV_SIM_PF_W | MV_SIM_PF_U);
        build(F_T);
        tab(t)[t] &= ~F_US;
        PF(VA, R, U, MV_SIM_PF_P | MV_SIM_PF_U);
        PF(VA, X, U, MV_SIM_PF_P | MV_SIM_PF_U | MV_SIM_PF_ID);
        OK_AT(VA, W, 0, data);
    }
    /* SMEP: supervisor fetch from a user page. */
    build(F_T);
    set_state(CR0_STD, CR4_STD | MV_CR4_SMEP, EFER_STD, 0);
    PF(VA, X, 0, MV_SIM_PF_P | MV_SIM_PF_ID);
    OK_AT(VA, X, U, data);
    OK_AT(VA, R, 0, data);
    /* SMAP: supervisor data access to a user page unless EFLAGS.AC; implicit always. */
    set_state(CR0_STD, CR4_STD | MV_CR4_SMAP, EFER_STD, 0);
    PF(VA, R, 0, MV_SIM_PF_P);
    PF(VA, W, 0, MV_SIM_PF_P | MV_SIM_PF_W);
    OK_AT(VA, R, MV_SIM_AC, data);
    OK_AT(VA, W, MV_SIM_AC, data);
    PF(VA, R, MV_SIM_AC | MV_SIM_IMPLICIT, MV_SIM_PF_P);
    PF(VA, R, U | MV_SIM_IMPLICIT, MV_SIM_PF_P);          /* implicit: supervisor, U clear */
    OK_AT(VA, R, U, data);
    OK_AT(VA, X, 0, data);                                 /* SMAP does not cover fetches */
    tab(G_L1)[4] &= ~F_RW;                                 /* SMAP with WP clear */
    mv_sim_flush_tlb(fx.sv);
    set_state(CR0_STD & ~MV_CR0_WP, CR4_STD | MV_CR4_SMAP, EFER_STD, 0);
    PF(VA, W, 0, MV_SIM_PF_P | MV_SIM_PF_W);
    OK_AT(VA, W, MV_SIM_AC, data);
    /* Supervisor-only page: SMAP does not apply. */
    build(F_P | F_RW);
    set_state(CR0_STD, CR4_STD | MV_CR4_SMAP | MV_CR4_SMEP, EFER_STD, 0);
    OK_AT(VA, W, 0, data);
    OK_AT(VA, X, 0, data);

    /* Non-canonical: #GP, no walk. */
    struct mv_sim_result r;
    assert_int_equal(mv_sim_translate(fx.sv, 0x0000800000000000ull, R, 0, &r), MV_SIM_GP_FAULT);
    assert_int_equal(mv_sim_oracle(fx.sv, 0x0000800000000000ull, R, 0, &r), MV_SIM_GP_FAULT);
}

/* 2 MiB and 1 GiB leaves, mapping the data frame from an aligned base. */
static void leaf_sizes(void)
{
    mv_mfn_t data = mfn_of(G_DATA);
    uint64_t da = addr(G_DATA);
    /* 2 MiB at L2 index 3 */
    build(F_T);
    uint64_t base2 = da & ~((2ull << 20) - 1);
    uint64_t va2 = (VA & ~((2ull << 20) - 1)) + (da - base2);
    tab(G_L2)[3] = base2 | F_T | F_PS;
    OK_AT(va2, W, U, data);
    struct mv_sim_result r;
    mv_sim_translate(fx.sv, va2, R, 0, &r);
    assert_int_equal(r.order, 9);
    tab(G_L2)[3] |= 1ull << 13; /* reserved in a 2 MiB leaf */
    mv_sim_flush_tlb(fx.sv);
    PF(va2, R, 0, MV_SIM_PF_P | MV_SIM_PF_RSVD);
    tab(G_L2)[3] = (base2 | F_T | F_PS) | (1ull << 12); /* PAT bit: fine */
    mv_sim_flush_tlb(fx.sv);
    OK_AT(va2, R, 0, data);

    /* 1 GiB at L3 index 2: reserved without the vCPU's offer. */
    build(F_T);
    uint64_t base1 = da & ~((1ull << 30) - 1);
    uint64_t va1 = (VA & ~((1ull << 30) - 1)) + (da - base1);
    tab(G_L3)[2] = base1 | F_T | F_PS;
    PF(va1, R, 0, MV_SIM_PF_P | MV_SIM_PF_RSVD);
    set_state(CR0_STD, CR4_STD, EFER_STD, MV_VCPUF_GBPAGES);
    OK_AT(va1, R, 0, data);
    mv_sim_translate(fx.sv, va1, W, 0, &r);
    assert_int_equal(r.order, 18);
    tab(G_L3)[2] |= 1ull << 29;
    mv_sim_flush_tlb(fx.sv);
    PF(va1, W, U, MV_SIM_PF_P | MV_SIM_PF_RSVD | MV_SIM_PF_W | MV_SIM_PF_U);
}

static void accessed_dirty(void)
{
    build(F_T);
    struct mv_sim_result r;
    uint64_t *e[4] = {&tab(G_L4)[1], &tab(G_L3)[2], &tab(G_L2)[3], &tab(G_L1)[4]};
    /* A fault sets nothing. */
    tab(G_L1)[4] &= ~F_RW;
    assert_int_equal(mv_sim_translate(fx.sv, VA, W, U, &r), MV_SIM_PAGE_FAULT);
    for (int i = 0; i < 4; i++)
        assert_int_equal(*e[i] & (F_A | F_D), 0);
    tab(G_L1)[4] |= F_RW;
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(*e[i] & (F_A | F_D), F_A);
    /* A write through a clean cached entry walks again to set D on the leaf only. */
    assert_int_equal(mv_sim_translate(fx.sv, VA, W, 0, &r), MV_SIM_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(*e[i] & (F_A | F_D), F_A);
    assert_int_equal(*e[3] & (F_A | F_D), F_A | F_D);
    struct mv_sim_vcpu_stats st;
    mv_sim_vcpu_stats(fx.sv, &st);
    uint64_t walks = st.walks;
    assert_int_equal(mv_sim_translate(fx.sv, VA + 8, W, 0, &r), MV_SIM_OK);
    mv_sim_vcpu_stats(fx.sv, &st);
    assert_int_equal(st.walks, walks); /* a hit */
    /* Data access through the vCPU. */
    uint64_t v = 0x1122334455667788ull, back = 0;
    assert_int_equal(mv_sim_rw(fx.sv, VA + 0xffc, &v, 8, W, 0, &r), MV_SIM_PAGE_FAULT);
    assert_int_equal(mv_sim_rw(fx.sv, VA + 0xff0, &v, 8, W, 0, &r), MV_SIM_OK);
    assert_int_equal(mv_sim_rw(fx.sv, VA + 0xff0, &back, 8, R, 0, &r), MV_SIM_OK);
    assert_int_equal(back, v);
    assert_memory_equal((uint8_t *)tab(G_DATA) + 0xff0, &v, 8);
}

static void test_pv_walk(void **state)
{
    (void)state;
    error_codes();
    leaf_sizes();
    accessed_dirty();
    /* PV: frames outside machine memory, and frames of another domain. */
    build(F_T);
    tab(G_L1)[4] = ((uint64_t)0xfffffff << MV_PAGE_SHIFT) | F_T;
    expect(VA, R, 0, MV_SIM_BAD_FRAME, 0, 0, __LINE__);
    struct mv_p2m_entry oe;
    assert_int_equal(mv_p2m_lookup(fx.other, 7, &oe), 0);
    tab(G_L1)[4] = (oe.mfn << MV_PAGE_SHIFT) | F_T;
    mv_sim_flush_tlb(fx.sv);
    struct mv_sim_result a, b;
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &a), MV_SIM_OK); /* hardware obeys */
    assert_int_equal(mv_sim_oracle(fx.sv, VA, R, 0, &b), MV_SIM_BAD_FRAME); /* caught */
    assert_int_equal(mv_sim_verify_page(fx.sv, VA, 0, NULL, NULL), 3);
    tab(G_L1)[4] = 0;
    mv_sim_flush_tlb(fx.sv);
}

static void test_hap_walk(void **state)
{
    (void)state;
    error_codes();
    leaf_sizes();
    accessed_dirty();
    mv_mfn_t data = mfn_of(G_DATA);
    uint64_t done;
    /* A table page with nothing behind it: the guest touched a hole. */
    build(F_T);
    mv_gfn_t g = G_L2;
    uint64_t saved[512];
    memcpy(saved, tab(G_L2), sizeof(saved));
    assert_int_equal(mv_decrease_reservation(fx.d, &g, 1, 0, &done), 0);
    expect(VA, R, 0, MV_SIM_EPT_HOLE, 0, 0, __LINE__);
    struct mv_sim_result r;
    mv_sim_translate(fx.sv, VA, R, 0, &r);
    assert_int_equal(r.addr >> MV_PAGE_SHIFT, G_L2);
    assert_int_equal(mv_populate_physmap(fx.d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    memcpy(tab(G_L2), saved, sizeof(saved));
    OK_AT(VA, R, 0, data);
    /* ram_ro: reads and fetches reach it, writes are denied. */
    build(F_T);
    assert_int_equal(mv_p2m_change_type_range(fx.d, G_DATA, 1, MV_P2M_RAM_RW, MV_P2M_RAM_RO,
                                              &done), 0);
    OK_AT(VA, R, 0, data);
    OK_AT(VA, X, 0, data);
    expect(VA, W, 0, MV_SIM_EPT_DENIED, 0, 0, __LINE__);
    /* A read-only table page: its A bit cannot be set, the walk is denied at it. */
    assert_int_equal(mv_p2m_change_type_range(fx.d, G_DATA, 1, MV_P2M_RAM_RO, MV_P2M_RAM_RW,
                                              &done), 0);
    build(F_T);
    assert_int_equal(mv_p2m_change_type_range(fx.d, G_L3, 1, MV_P2M_RAM_RW, MV_P2M_RAM_RO,
                                              &done), 0);
    expect(VA, R, 0, MV_SIM_EPT_DENIED, 0, 0, __LINE__);
    tab(G_L3)[2] |= F_A; /* already accessed: reading it is enough */
    OK_AT(VA, R, 0, data);
    assert_int_equal(mv_p2m_change_type_range(fx.d, G_L3, 1, MV_P2M_RAM_RO, MV_P2M_RAM_RW,
                                              &done), 0);
    /* mmio behind the data page: emulated, fetch denied. */
    build(F_T);
    g = G_DATA2;
    assert_int_equal(mv_decrease_reservation(fx.d, &g, 1, 0, &done), 0);
    assert_int_equal(mv_p2m_map_mmio(fx.d, G_DATA2, 0xfee00, 1, MV_P2M_MT_UC), 0);
    tab(G_L1)[5] = addr(G_DATA2) | F_T;
    expect(VA + 0x1000, R, 0, MV_SIM_EPT_MMIO, 0, 0, __LINE__);
    expect(VA + 0x1000, W, 0, MV_SIM_EPT_MMIO, 0, 0, __LINE__);
    expect(VA + 0x1000, X, 0, MV_SIM_EPT_DENIED, 0, 0, __LINE__);
    assert_int_equal(mv_p2m_set_entry(fx.d, G_DATA2, 0, 0, MV_P2M_INVALID, 0), 0);
    assert_int_equal(mv_populate_physmap(fx.d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    tab(G_L1)[5] = 0;
    mv_sim_flush_tlb(fx.sv);
}

/* ---- TLB --------------------------------------------------------------------------------- */

static void tlb_stale_and_global(void)
{
    struct mv_sim_result r;
    struct mv_sim_tlb_report rep;
    mv_mfn_t a = mfn_of(G_DATA), b = mfn_of(G_DATA2);
    build(F_T);
    assert_int_equal(mv_sim_translate(fx.sv, VA, W, 0, &r), MV_SIM_OK);
    assert_int_equal(r.mfn, a);
    /* The guest remaps the page and forgets INVLPG: the old translation may live on. */
    tab(G_L1)[4] = addr(G_DATA2) | F_P | F_US;
    assert_int_equal(mv_sim_translate(fx.sv, VA, W, 0, &r), MV_SIM_OK);
    assert_int_equal(r.mfn, a);
    assert_int_equal(mv_sim_tlb_check(fx.sv, &rep), 0);
    assert_int_equal(rep.stale_legal, 1);
    assert_int_equal(rep.violations, 0);
    mv_sim_invlpg(fx.sv, VA);
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_OK);
    assert_int_equal(r.mfn, b);
    assert_int_equal(mv_sim_translate(fx.sv, VA, W, U, &r), MV_SIM_PAGE_FAULT);
    assert_int_equal(mv_sim_tlb_check(fx.sv, &rep), 0);
    assert_int_equal(rep.stale_legal, 0);

    if (!fx.hap)
        return;
    /* Global entries survive a CR3 write with CR4.PGE, others do not. */
    build(F_T);
    tab(G_L1)[4] |= F_G;
    tab(G_L1)[5] = addr(G_DATA2) | F_T;
    memset(tab(G_L4B), 0, MV_PAGE_SIZE);
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_OK);
    assert_int_equal(mv_sim_translate(fx.sv, VA + 0x1000, R, 0, &r), MV_SIM_OK);
    assert_int_equal(mv_sim_set_cr3(fx.sv, G_L4B << MV_PAGE_SHIFT), 0);
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_OK);
    assert_int_equal(r.mfn, a);
    assert_int_equal(mv_sim_translate(fx.sv, VA + 0x1000, R, 0, &r), MV_SIM_PAGE_FAULT);
    /* Without PGE a CR3 write flushes everything. */
    set_state(CR0_STD, CR4_STD & ~MV_CR4_PGE, EFER_STD, 0);
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_OK);
    assert_int_equal(mv_sim_set_cr3(fx.sv, G_L4B << MV_PAGE_SHIFT), 0);
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_PAGE_FAULT);
    assert_int_equal(mv_sim_set_cr3(fx.sv, G_L4 << MV_PAGE_SHIFT), 0);
    tab(G_L1)[5] = 0;
    mv_sim_flush_tlb(fx.sv);
}

static void test_pv_tlb(void **state)
{
    (void)state;
    tlb_stale_and_global();
}

static void test_hap_tlb(void **state)
{
    (void)state;
    tlb_stale_and_global();
    struct mv_sim_result r;
    struct mv_sim_tlb_report rep;
    uint64_t done;
    /* The engine reduces rights (log-dirty on) and flushes: the writable entry is gone. */
    build(F_T);
    assert_int_equal(mv_sim_translate(fx.sv, VA, W, 0, &r), MV_SIM_OK);
    assert_int_equal(mv_p2m_logdirty_enable(fx.d), 0);
    assert_int_equal(mv_sim_tlb_check(fx.sv, &rep), 0);
    assert_int_equal(mv_p2m_logdirty_disable(fx.d), 0);
    /* The same with the flush lost: caught. */
    assert_int_equal(mv_sim_translate(fx.sv, VA, W, 0, &r), MV_SIM_OK);
    mv_sim_drop_flushes(fx.s, true);
    assert_int_equal(mv_p2m_logdirty_enable(fx.d), 0);
    mv_sim_drop_flushes(fx.s, false);
    assert_int_equal(mv_sim_tlb_check(fx.sv, &rep), MV_EUCLEAN);
    assert_string_equal(rep.first_what, "stale-after-engine-change");
    mv_sim_flush_tlb(fx.sv);
    assert_int_equal(mv_p2m_logdirty_disable(fx.d), 0);
    /* A frame taken away without a flush: caught too. */
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_OK);
    mv_sim_drop_flushes(fx.s, true);
    mv_gfn_t g = G_DATA;
    assert_int_equal(mv_decrease_reservation(fx.d, &g, 1, 0, &done), 0);
    mv_sim_drop_flushes(fx.s, false);
    assert_int_equal(mv_sim_tlb_check(fx.sv, &rep), MV_EUCLEAN);
    assert_string_equal(rep.first_what, "frame-left-domain");
    mv_sim_flush_tlb(fx.sv);
    expect(VA, R, 0, MV_SIM_EPT_HOLE, 0, 0, __LINE__);
    assert_int_equal(mv_populate_physmap(fx.d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    /* With the flush working, a decrease leaves nothing behind. */
    build(F_T);
    assert_int_equal(mv_sim_translate(fx.sv, VA, R, 0, &r), MV_SIM_OK);
    assert_int_equal(mv_decrease_reservation(fx.d, &g, 1, 0, &done), 0);
    assert_int_equal(mv_sim_tlb_check(fx.sv, &rep), 0);
    assert_int_equal(rep.entries, 0);
    assert_int_equal(mv_populate_physmap(fx.d, &g, 1, 0, MV_NODE_ANY, &done), 0);
}

/* ---- HAP log-dirty: every page written, A/D updates included, is reported ------------ */

static bool bit(const uint64_t *bm, uint64_t i)
{
    return (bm[i / 64] >> (i % 64)) & 1;
}

static void test_hap_logdirty(void **state)
{
    (void)state;
    enum { NL1 = 4, NDATA = NL1 * 512, FIRST_DATA = 64 };
    /* A guest with NL1 L1 tables mapping NDATA pages at va 0. */
    memset(tab(G_L4), 0, MV_PAGE_SIZE);
    memset(tab(G_L3), 0, MV_PAGE_SIZE);
    memset(tab(G_L2), 0, MV_PAGE_SIZE);
    tab(G_L4)[0] = addr(G_L3) | F_T;
    tab(G_L3)[0] = addr(G_L2) | F_T;
    mv_gfn_t l1[NL1];
    for (unsigned i = 0; i < NL1; i++) {
        l1[i] = 32 + i;
        memset(tab(l1[i]), 0, MV_PAGE_SIZE);
        tab(G_L2)[i] = addr(l1[i]) | F_T;
    }
    assert_true(FIRST_DATA + NDATA / 4 <= GUEST_PAGES);
    /* Pages map gfns FIRST_DATA.. (four pages share each gfn: aliases). */
    for (unsigned i = 0; i < NDATA; i++)
        tab(l1[i / 512])[i % 512] = addr(FIRST_DATA + i % (GUEST_PAGES - FIRST_DATA)) | F_T;
    set_state(CR0_STD, CR4_STD, EFER_STD, 0);
    mv_sim_flush_tlb(fx.sv);

    static uint64_t bm[GUEST_PAGES / 64];
    static uint8_t wrote[GUEST_PAGES];
    uint64_t done, dirty;
    assert_int_equal(mv_p2m_logdirty_enable(fx.d), 0);
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(fx.d, 0, GUEST_PAGES, bm, GUEST_PAGES,
                                                    &done, &dirty), 0);
    struct th_rng rng = {.s = 0x5117};
    uint64_t total_ad = 0;
    for (unsigned round = 0; round < 40; round++) {
        memset(wrote, 0, sizeof(wrote));
        /* Each table page as it was, to see the A/D bits the walker sets. */
        mv_gfn_t tables[3 + NL1] = {G_L4, G_L3, G_L2};
        for (unsigned i = 0; i < NL1; i++)
            tables[3 + i] = l1[i];
        uint64_t snap[3 + NL1][512];
        for (unsigned t = 0; t < 3 + NL1; t++)
            memcpy(snap[t], tab(tables[t]), MV_PAGE_SIZE);
        unsigned n = 1 + (unsigned)th_rand_below(&rng, 300);
        for (unsigned i = 0; i < n; i++) {
            unsigned p = (unsigned)th_rand_below(&rng, NDATA);
            uint64_t va = (uint64_t)p << MV_PAGE_SHIFT;
            struct mv_sim_result r;
            if (th_rand_below(&rng, 3) == 0) {
                uint64_t v = round;
                assert_int_equal(mv_sim_rw(fx.sv, va + 8 * th_rand_below(&rng, 512), &v, 8, W,
                                           0, &r), MV_SIM_OK);
                wrote[FIRST_DATA + p % (GUEST_PAGES - FIRST_DATA)] = 1;
            } else {
                uint64_t v;
                assert_int_equal(mv_sim_rw(fx.sv, va, &v, 8, R, 0, &r), MV_SIM_OK);
            }
        }
        /* The guest kernel ages some pages: clears A bits (a write: through the engine's
         * guest-physical path) and flushes. */
        for (unsigned i = 0; i < 8; i++) {
            unsigned p = (unsigned)th_rand_below(&rng, NDATA);
            uint64_t e = tab(l1[p / 512])[p % 512] & ~(F_A | F_D);
            assert_int_equal(mv_guest_phys_write(fx.d, (l1[p / 512] << MV_PAGE_SHIFT) +
                                                 8 * (p % 512), &e, 8), 0);
            wrote[l1[p / 512]] = 1;
            mv_sim_invlpg(fx.sv, (uint64_t)p << MV_PAGE_SHIFT);
        }
        for (unsigned t = 0; t < 3 + NL1; t++) {
            if (memcmp(snap[t], tab(tables[t]), MV_PAGE_SIZE)) {
                wrote[tables[t]] = 1;
                total_ad++;
            }
        }
        assert_int_equal(mv_p2m_logdirty_peek_and_clean(fx.d, 0, GUEST_PAGES, bm, GUEST_PAGES,
                                                        &done, &dirty), 0);
        for (mv_gfn_t g = 0; g < GUEST_PAGES; g++)
            if (wrote[g] && !bit(bm, g))
                fail_msg("round %u: gfn %#llx written but not reported dirty", round,
                         (unsigned long long)g);
        struct mv_sim_tlb_report rep;
        assert_int_equal(mv_sim_tlb_check(fx.sv, &rep), 0);
    }
    assert_true(total_ad > 0); /* A/D updates did happen and were reported */
    assert_int_equal(mv_p2m_logdirty_disable(fx.d), 0);
    mv_sim_flush_tlb(fx.sv);
}

/* ---- Two vCPUs interleaved: exact replay ---------------------------------------------- */

static uint64_t interleave(uint64_t seed)
{
    build(F_T);
    mv_sim_vcpu_t *v[2] = {fx.sv, mv_sim_vcpu(fx.s, fx.d, 1)};
    struct mv_vcpu_state st;
    st.size = sizeof(st);
    assert_int_equal(mv_vcpu_get_state(mv_sim_vcpu_engine(fx.sv), &st), 0);
    assert_int_equal(mv_vcpu_set_state(mv_sim_vcpu_engine(v[1]), &st), 0);
    if (!fx.hap)
        mv_sim_set_root_override(v[1], mfn_of(G_L4));
    mv_sim_flush_tlb(v[1]);
    for (unsigned i = 0; i < 8; i++) {
        tab(G_L1)[i] = addr(G_DATA + i) | F_T;
        memset(tab(G_DATA + i), 0, MV_PAGE_SIZE);
    }
    struct th_rng rng = {.s = seed};
    uint64_t hsh = 0xcbf29ce484222325ull;
    for (unsigned i = 0; i < 4000; i++) {
        mv_sim_vcpu_t *sv = v[th_rand_below(&rng, 2)];
        uint64_t va = (VA & ~0x1fffffull) + (th_rand_below(&rng, 10) << MV_PAGE_SHIFT);
        uint32_t op = (uint32_t)th_rand_below(&rng, 3);
        if (th_rand_below(&rng, 50) == 0) {
            unsigned k = (unsigned)th_rand_below(&rng, 8);
            tab(G_L1)[k] ^= F_RW; /* the guest changes an entry and flushes everywhere */
            mv_sim_invlpg(v[0], (VA & ~0x1fffffull) + ((uint64_t)k << MV_PAGE_SHIFT));
            mv_sim_invlpg(v[1], (VA & ~0x1fffffull) + ((uint64_t)k << MV_PAGE_SHIFT));
        }
        uint64_t val = i;
        struct mv_sim_result r;
        mv_sim_rw(sv, va + 8 * th_rand_below(&rng, 512), &val, 8, op, 0, &r);
        hsh = (hsh ^ (r.kind * 131 + r.error_code + val)) * 0x100000001b3ull;
        struct mv_sim_result o;
        if (r.kind != MV_SIM_OK) {
            mv_sim_oracle(sv, va, op, 0, &o);
            assert_true(mv_sim_same(&r, &o) || r.kind == MV_SIM_PAGE_FAULT);
        }
    }
    for (unsigned i = 0; i < 8; i++)
        hsh = (hsh ^ (tab(G_DATA + i)[3] + tab(G_L1)[i])) * 0x100000001b3ull;
    return hsh;
}

static void test_replay(void **state)
{
    (void)state;
    uint64_t a = interleave(42);
    uint64_t b = interleave(42);
    assert_int_equal(a, b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pv_walk, setup_pv, teardown),
        cmocka_unit_test_setup_teardown(test_hap_walk, setup_hap, teardown),
        cmocka_unit_test_setup_teardown(test_pv_tlb, setup_pv, teardown),
        cmocka_unit_test_setup_teardown(test_hap_tlb, setup_hap, teardown),
        cmocka_unit_test_setup_teardown(test_hap_logdirty, setup_hap, teardown),
        cmocka_unit_test_setup_teardown(test_replay, setup_pv, teardown),
        cmocka_unit_test_setup_teardown(test_replay, setup_hap, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

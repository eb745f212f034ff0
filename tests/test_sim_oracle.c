/*
 * tests/test_sim_oracle.c - the vCPU against the oracle on seeded random tables.
 *
 * Random 4-level tables (present or not, every right, NX, global, PS at L2 and L3,
 * reserved bits now and then, software bits), random control state (CR0.WP, SMEP, SMAP,
 * NXE, PGE, 1 GiB pages) and random accesses (read, write, fetch; user or supervisor,
 * EFLAGS.AC, implicit). After every access the vCPU and the oracle must agree. The guest
 * rewrites entries and flushes (between its write and its flush the TLB check must find
 * only legal stale entries); under HAP the engine changes the p2m underneath (types, log
 * dirty, frames taken and given back), and because it flushes, agreement must hold with no
 * flush from the guest.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "sim.h"

#define PAGES 1024u
#define DATA0 512u /* gfns 512..1023: one 2 MiB extent (PS leaves map it) */

/* Table pools by level: L4 1, L3 2..5, L2 6..13, L1 14..29; small data 100..511. */
static const unsigned pool_first[5] = {0, 14, 6, 2, 1};
static const unsigned pool_n[5] = {0, 16, 8, 4, 1};
static const unsigned idx_set[5][4] = {{0}, {0, 1, 2, 7}, {0, 1, 2, 3}, {0, 1, 5, 9}, {0, 1, 2, 511}};

static mv_sim_t *s;
static mv_host_t *h;
static mv_domain_t *d;
static mv_sim_vcpu_t *sv;
static bool hap;
static struct th_rng rng;

static mv_mfn_t mfn_of(mv_gfn_t g)
{
    struct mv_p2m_entry e;
    assert_int_equal(mv_p2m_lookup(d, g, &e), 0);
    return e.mfn;
}

static uint64_t addr(mv_gfn_t g)
{
    return hap ? g << MV_PAGE_SHIFT : mfn_of(g) << MV_PAGE_SHIFT;
}

static uint64_t *tab(mv_gfn_t g)
{
    return mv_frame_va(h, mfn_of(g));
}

static uint64_t rbits(void)
{
    uint64_t e = 0;
    uint64_t x = th_rand(&rng);
    if (x % 10 < 9) e |= MV_PTE_RW;
    if ((x >> 4) % 10 < 9) e |= MV_PTE_US;
    if ((x >> 8) % 10 < 1) e |= MV_PTE_NX;
    if ((x >> 12) % 10 < 2) e |= MV_PTE_G;
    if ((x >> 16) & 1) e |= MV_PTE_A;
    if ((x >> 17) & 1) e |= MV_PTE_D;
    e |= ((x >> 20) & 7) << 9;            /* available bits */
    e |= ((x >> 24) & 0x7f) << 52;        /* available bits */
    return e;
}

static uint64_t random_entry(int level)
{
    uint64_t x = th_rand_below(&rng, 100);
    if (x < 3)
        return th_rand(&rng) & ~1ull; /* not present, garbage */
    uint64_t e = MV_PTE_P | rbits();
    if (x < 5)
        e |= 1ull << (40 + th_rand_below(&rng, 12)); /* reserved: beyond the width */
    if (level == 1) {
        mv_gfn_t g = th_rand_below(&rng, 3) ? 100 + th_rand_below(&rng, 412)
                                            : DATA0 + th_rand_below(&rng, 512);
        return e | addr(g);
    }
    if (th_rand_below(&rng, 100) < (level == 4 ? 2u : 12u)) {
        e |= MV_PTE_PS;
        if (level == 2) {
            e |= addr(DATA0);
            if (th_rand_below(&rng, 8) == 0)
                e |= 1ull << 13; /* reserved in a 2 MiB leaf */
        } else if (level == 3) {
            if (th_rand_below(&rng, 4) == 0)
                e |= 1ull << (13 + th_rand_below(&rng, 17));
        }
        return e;
    }
    mv_gfn_t t = pool_first[level - 1] + th_rand_below(&rng, pool_n[level - 1]);
    return e | addr(t);
}

static void fill_tables(void)
{
    for (int level = 4; level >= 1; level--)
        for (unsigned k = 0; k < pool_n[level]; k++) {
            uint64_t *t = tab(pool_first[level] + k);
            memset(t, 0, MV_PAGE_SIZE);
            for (unsigned i = 0; i < 4; i++)
                t[idx_set[level][i]] = random_entry(level);
        }
}

static uint64_t random_va(void)
{
    uint64_t va = 0;
    for (int level = 4; level >= 1; level--)
        va |= (uint64_t)idx_set[level][th_rand_below(&rng, 4)] << (12 + 9 * (level - 1));
    va |= th_rand_below(&rng, 4096) & ~7ull;
    return (uint64_t)((int64_t)(va << 16) >> 16);
}

static void random_state(void)
{
    uint64_t x = th_rand(&rng);
    struct mv_vcpu_state st = {.size = sizeof(st)};
    st.cr0 = 1 | MV_CR0_PG | ((x & 1) ? MV_CR0_WP : 0);
    st.cr4 = MV_CR4_PAE | ((x & 2) ? MV_CR4_PGE : 0) | ((x & 4) ? MV_CR4_SMEP : 0) |
             ((x & 8) ? MV_CR4_SMAP : 0);
    st.efer = MV_EFER_LME | (1ull << 10) | ((x & 16) ? MV_EFER_NXE : 0);
    st.flags = hap && (x & 32) ? MV_VCPUF_GBPAGES : 0;
    st.cr3 = 1ull << MV_PAGE_SHIFT;
    assert_int_equal(mv_vcpu_set_state(mv_sim_vcpu_engine(sv), &st), 0);
    if (!hap)
        mv_sim_set_root_override(sv, mfn_of(1));
}

static void setup_mode(bool want_hap)
{
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 64 * TH_MiB};
    assert_int_equal(mv_sim_create(&c, &s), 0);
    h = mv_sim_host(s);
    hap = want_hap;
    struct mv_domain_config dc = {.size = sizeof(dc), .domid = 3,
                                  .type = hap ? MV_DOMAIN_HVM : MV_DOMAIN_PV,
                                  .paging = hap ? MV_PAGING_HAP : MV_PAGING_PV, .nr_vcpus = 1,
                                  .max_pages = PAGES, .node_affinity = MV_NODE_ANY};
    assert_int_equal(mv_domain_create(h, &dc, &d), 0);
    uint64_t done;
    for (mv_gfn_t g = 0; g < DATA0; g++)
        assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    mv_gfn_t g = DATA0;
    assert_int_equal(mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done), 0);
    assert_int_equal(mv_sim_attach(s, d), 0);
    sv = mv_sim_vcpu(s, d, 0);
}

static void teardown_mode(void)
{
    int rc;
    th_assert_audit_clean(h);
    mv_sim_detach(s, d);
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    th_assert_audit_clean(h);
    mv_sim_destroy(s);
}

static void compare(uint64_t va, uint32_t op, uint32_t flags, unsigned step)
{
    struct mv_sim_result o, r;
    mv_sim_oracle(sv, va, op, flags, &o);
    mv_sim_translate(sv, va, op, flags, &r);
    if (!mv_sim_same(&r, &o))
        fail_msg("%s step %u va %#llx op %u flags %#x: vcpu %s code %#x mfn %#llx addr %#llx rc %d;"
                 " oracle %s code %#x mfn %#llx addr %#llx rc %d", hap ? "hap" : "pv", step,
                 (unsigned long long)va, op, flags, mv_sim_kind_name(r.kind), r.error_code,
                 (unsigned long long)r.mfn, (unsigned long long)r.addr, r.rc,
                 mv_sim_kind_name(o.kind), o.error_code, (unsigned long long)o.mfn,
                 (unsigned long long)o.addr, o.rc);
}

/* The engine changes the p2m underneath (HAP): it flushes, so no guest flush is needed. */
static void engine_change(void)
{
    uint64_t done, dirty;
    static uint64_t bm[PAGES / 64];
    mv_gfn_t g = 100 + th_rand_below(&rng, 412);
    struct mv_p2m_entry e;
    switch (th_rand_below(&rng, 5)) {
    case 0:
        assert_int_equal(mv_p2m_lookup(d, g, &e), 0);
        if (e.type == MV_P2M_RAM_RW || e.type == MV_P2M_RAM_RO)
            assert_int_equal(mv_p2m_change_type_range(d, g, 1, e.type,
                                                      e.type == MV_P2M_RAM_RW ? MV_P2M_RAM_RO
                                                                              : MV_P2M_RAM_RW,
                                                      &done), 0);
        break;
    case 1: /* a table page read-only: its A bits cannot be set */
        g = 1 + th_rand_below(&rng, 29);
        assert_int_equal(mv_p2m_lookup(d, g, &e), 0);
        if (e.type == MV_P2M_RAM_RW)
            assert_int_equal(mv_p2m_change_type_range(d, g, 1, MV_P2M_RAM_RW, MV_P2M_RAM_RO,
                                                      &done), 0);
        else if (e.type == MV_P2M_RAM_RO)
            assert_int_equal(mv_p2m_change_type_range(d, g, 1, MV_P2M_RAM_RO, MV_P2M_RAM_RW,
                                                      &done), 0);
        break;
    case 2: /* a data frame taken away and given back: a new frame */
        assert_int_equal(mv_p2m_lookup(d, g, &e), 0);
        if (e.type != MV_P2M_INVALID) {
            assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0);
            if (th_rand_below(&rng, 2))
                assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
        } else {
            assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
        }
        break;
    case 3:
        if (mv_p2m_logdirty_enable(d) == MV_EALREADY)
            assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, PAGES, bm, PAGES, &done,
                                                            &dirty), 0);
        break;
    default:
        mv_p2m_logdirty_disable(d);
        break;
    }
}

static void run(uint64_t seed, unsigned steps)
{
    rng.s = seed;
    fill_tables();
    random_state();
    mv_sim_flush_tlb(sv);
    unsigned pending = 0; /* guest writes not flushed yet */
    for (unsigned step = 0; step < steps; step++) {
        uint64_t va = random_va();
        uint32_t op = (uint32_t)th_rand_below(&rng, 3);
        uint32_t flags = (uint32_t)th_rand_below(&rng, 8);
        if (!pending) {
            compare(va, op, flags, step);
        } else {
            struct mv_sim_result r;
            mv_sim_translate(sv, va, op, flags, &r);
        }
        uint64_t x = th_rand_below(&rng, 1000);
        if (x < 20) {
            /* The guest rewrites an entry; until it flushes, stale entries are legal. */
            int level = 1 + (int)th_rand_below(&rng, 4);
            unsigned k = (unsigned)th_rand_below(&rng, pool_n[level]);
            tab(pool_first[level] + k)[idx_set[level][th_rand_below(&rng, 4)]] =
                random_entry(level);
            pending++;
            struct mv_sim_tlb_report rep;
            assert_int_equal(mv_sim_tlb_check(sv, &rep), 0);
        } else if (x < 30 && pending) {
            mv_sim_flush_tlb(sv);
            pending = 0;
        } else if (x < 33) {
            random_state(); /* control-register writes flush */
        } else if (x < 36) {
            fill_tables();
            mv_sim_flush_tlb(sv);
            pending = 0;
        } else if (hap && x < 60) {
            engine_change();
            struct mv_sim_tlb_report rep;
            if (mv_sim_tlb_check(sv, &rep))
                fail_msg("step %u: TLB %s at %#llx", step, rep.first_what,
                         (unsigned long long)rep.first_va);
        }
        if (step % 4096 == 0)
            th_assert_audit_clean(h);
    }
    mv_p2m_logdirty_disable(d);
    struct mv_sim_vcpu_stats st;
    mv_sim_vcpu_stats(sv, &st);
    assert_true(st.tlb_hits > 0 && st.walks > 0 && st.page_faults > 0);
    if (seed == 64 || seed == 65)
        print_message("%s: %llu accesses, %llu TLB hits, %llu walks, %llu #PF, %llu EPT "
                      "violations, %llu A/D updates\n", hap ? "hap" : "pv",
                      (unsigned long long)st.accesses, (unsigned long long)st.tlb_hits,
                      (unsigned long long)st.walks, (unsigned long long)st.page_faults,
                      (unsigned long long)st.ept_violations, (unsigned long long)st.ad_updates);
    if (hap)
        assert_true(st.ept_violations > 0);
}

static void test_pv_random(void **state)
{
    (void)state;
    setup_mode(false);
    for (uint64_t seed = 1; seed <= 8; seed++)
        run(seed * 8, 4000);
    teardown_mode();
}

static void test_hap_random(void **state)
{
    (void)state;
    setup_mode(true);
    for (uint64_t seed = 1; seed <= 8; seed++)
        run(seed * 8 + 1, 4000);
    teardown_mode();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pv_random),
        cmocka_unit_test(test_hap_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

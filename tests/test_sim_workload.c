/*
 * tests/test_sim_workload.c - every preset in PV, HAP and shadow on two domains of two vCPUs, with
 * the oracle and the TLB check at every invalidation the guests make and an audit at the
 * end; the same seed gives the same per-domain figures.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "sim.h"

#define STEPS 3000u

/* The shadow pool's budget of the runs (0: the engine's default). */
static uint64_t pool_pages;

static void run(const char *name, uint32_t paging, uint64_t seed, struct mv_sim_guest_stats out[2])
{
    mv_sim_t *s;
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 256 * TH_MiB};
    assert_int_equal(mv_sim_create(&c, &s), 0);
    struct mv_sim_run_config rc = {.size = sizeof(rc), .workload = name, .domains = 2,
                                   .vcpus = 2, .seed = seed, .hvm = paging != MV_PAGING_PV,
                                   .hap = paging == MV_PAGING_HAP, .check = true,
                                   .shadow_pool_pages = pool_pages};
    mv_sim_run_t *r;
    assert_int_equal(mv_sim_run_create(s, &rc, &r), 0);
    int e = mv_sim_run_steps(r, STEPS);
    if (e)
        fail_msg("%s %s: %s", name, th_paging_name(paging), mv_strerror(e));
    for (uint32_t i = 0; i < 2; i++) {
        struct mv_sim_guest_stats *st = &out[i];
        mv_sim_guest_stats(mv_sim_run_guest(r, i), st);
        if (st->mismatches || st->tlb_violations || st->content_errors || st->errors)
            fail_msg("%s %s dom %u: mismatches %llu tlb %llu content %llu errors %llu (%d)",
                     name, th_paging_name(paging), i + 1, (unsigned long long)st->mismatches,
                     (unsigned long long)st->tlb_violations,
                     (unsigned long long)st->content_errors, (unsigned long long)st->errors,
                     st->last_error);
        uint64_t ops = 0;
        for (unsigned k = 0; k < MV_SIM_GOP_NR; k++)
            ops += st->ops[k];
        assert_true(ops >= STEPS / 2 / 2);
        if (paging == MV_PAGING_SHADOW && strcmp(name, "idle")) {
            /* The guest's table edits went through the shadows: trapped and emulated. */
            struct mv_shadow_stats ss = {.size = sizeof(ss)};
            assert_int_equal(mv_shadow_stats(mv_sim_guest_domain(mv_sim_run_guest(r, i)), &ss),
                             0);
            assert_true(ss.faults[MV_SHADOW_FIXED] > 0);
            assert_true(ss.emulated_writes > 0);
            assert_true(ss.shadows[1] > 0 && ss.shadows[4] > 0);
            if (i == 0)
                print_message("%s shadow: %llu fixed, %llu injected, %llu emulated writes, "
                              "%llu evictions, %llu zapped\n", name,
                              (unsigned long long)ss.faults[MV_SHADOW_FIXED],
                              (unsigned long long)ss.faults[MV_SHADOW_INJECT],
                              (unsigned long long)ss.emulated_writes,
                              (unsigned long long)ss.evictions, (unsigned long long)ss.zapped);
        }
    }
    th_assert_audit_clean(mv_sim_host(s));
    mv_sim_run_destroy(r);
    th_assert_audit_clean(mv_sim_host(s));
    mv_sim_destroy(s);
}

static void presets(uint32_t paging)
{
    for (unsigned i = 0; mv_sim_workload_name(i); i++) {
        struct mv_sim_guest_stats st[2];
        run(mv_sim_workload_name(i), paging, 42, st);
        if (!strcmp(mv_sim_workload_name(i), "forky"))
            assert_true(st[0].ops[MV_SIM_GOP_FORK] > 0 && st[0].faults[MV_SIM_GF_COW] > 0);
        assert_true(st[0].checks > 0 || !strcmp(mv_sim_workload_name(i), "idle"));
    }
}

static void presets_pv(void **state)
{
    (void)state;
    presets(MV_PAGING_PV);
}

static void presets_hap(void **state)
{
    (void)state;
    presets(MV_PAGING_HAP);
}

static void presets_shadow(void **state)
{
    (void)state;
    presets(MV_PAGING_SHADOW);
}

/* The pool at its floor (two vCPUs): shadows are evicted and rebuilt all the time. */
static void presets_shadow_floor(void **state)
{
    (void)state;
    pool_pages = 2 * MV_SHADOW_FLOOR_PER_VCPU;
    uint64_t evictions = 0;
    for (unsigned i = 0; mv_sim_workload_name(i); i++) {
        mv_sim_t *s;
        struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 256 * TH_MiB};
        assert_int_equal(mv_sim_create(&c, &s), 0);
        struct mv_sim_run_config rc = {.size = sizeof(rc), .workload = mv_sim_workload_name(i),
                                       .domains = 1, .vcpus = 2, .seed = 5, .hvm = true,
                                       .check = true, .shadow_pool_pages = pool_pages};
        mv_sim_run_t *r;
        assert_int_equal(mv_sim_run_create(s, &rc, &r), 0);
        int e = mv_sim_run_steps(r, STEPS);
        if (e)
            fail_msg("%s at the floor: %s", rc.workload, mv_strerror(e));
        struct mv_sim_guest_stats st;
        mv_sim_guest_stats(mv_sim_run_guest(r, 0), &st);
        if (st.mismatches || st.tlb_violations || st.content_errors || st.errors)
            fail_msg("%s at the floor: mismatches %llu tlb %llu content %llu errors %llu (%d)",
                     rc.workload, (unsigned long long)st.mismatches,
                     (unsigned long long)st.tlb_violations,
                     (unsigned long long)st.content_errors, (unsigned long long)st.errors,
                     st.last_error);
        struct mv_shadow_stats ss = {.size = sizeof(ss)};
        assert_int_equal(mv_shadow_stats(mv_sim_guest_domain(mv_sim_run_guest(r, 0)), &ss), 0);
        assert_int_equal(ss.budget, pool_pages);
        assert_true(ss.pool_frames <= pool_pages);
        evictions += ss.evictions;
        th_assert_audit_clean(mv_sim_host(s));
        mv_sim_run_destroy(r);
        th_assert_audit_clean(mv_sim_host(s));
        mv_sim_destroy(s);
    }
    print_message("pool at the floor (%llu frames): %llu evictions over the presets\n",
                  (unsigned long long)pool_pages, (unsigned long long)evictions);
    assert_true(evictions > 100);
    pool_pages = 0;
}

/* FNV-1a over the guest's memory, frame by frame. */
static uint64_t memory_hash(mv_domain_t *d, uint64_t pages)
{
    static uint8_t buf[4096];
    uint64_t hash = 0xcbf29ce484222325ull;
    for (mv_gfn_t g = 0; g < pages; g++) {
        assert_int_equal(mv_guest_phys_read(d, g << 12, buf, sizeof(buf)), 0);
        for (size_t i = 0; i < sizeof(buf); i++)
            hash = (hash ^ buf[i]) * 0x100000001b3ull;
    }
    return hash;
}

/*
 * Out-of-sync L1s on and off, the same seeded run: the oracle agrees at every invalidation
 * (the resync points) in both, and the guests end with the same figures and the same
 * memory, byte for byte (page tables included).
 */
static void oos_on_off(void **state)
{
    (void)state;
    static const char *const names[] = {"forky", "mmap-churn"};
    for (unsigned n = 0; n < 2; n++) {
        struct mv_sim_guest_stats st[2][2];
        uint64_t hash[2][2], unsyncs = 0;
        for (int sync = 0; sync < 2; sync++) {
            mv_sim_t *s;
            struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 256 * TH_MiB};
            assert_int_equal(mv_sim_create(&c, &s), 0);
            struct mv_sim_run_config rc = {.size = sizeof(rc), .workload = names[n],
                                           .domains = 2, .vcpus = 2, .seed = 77, .hvm = true,
                                           .check = true, .shadow_sync = sync != 0};
            mv_sim_run_t *r;
            assert_int_equal(mv_sim_run_create(s, &rc, &r), 0);
            assert_int_equal(mv_sim_run_steps(r, STEPS), 0);
            for (uint32_t i = 0; i < 2; i++) {
                mv_sim_guest_t *g = mv_sim_run_guest(r, i);
                mv_sim_guest_stats(g, &st[sync][i]);
                if (st[sync][i].mismatches || st[sync][i].tlb_violations ||
                    st[sync][i].content_errors || st[sync][i].errors)
                    fail_msg("%s oos %s dom %u: mismatches %llu tlb %llu content %llu errors "
                             "%llu", names[n], sync ? "off" : "on", i + 1,
                             (unsigned long long)st[sync][i].mismatches,
                             (unsigned long long)st[sync][i].tlb_violations,
                             (unsigned long long)st[sync][i].content_errors,
                             (unsigned long long)st[sync][i].errors);
                struct mv_shadow_stats ss = {.size = sizeof(ss)};
                assert_int_equal(mv_shadow_stats(mv_sim_guest_domain(g), &ss), 0);
                if (sync)
                    assert_int_equal(ss.unsyncs, 0);
                else
                    unsyncs += ss.unsyncs;
                hash[sync][i] = memory_hash(mv_sim_guest_domain(g), st[sync][i].pages_total);
            }
            th_assert_audit_clean(mv_sim_host(s));
            mv_sim_run_destroy(r);
            mv_sim_destroy(s);
        }
        assert_true(unsyncs > 0);
        for (uint32_t i = 0; i < 2; i++) {
            assert_memory_equal(&st[0][i], &st[1][i], sizeof(st[0][i]));
            assert_int_equal(hash[0][i], hash[1][i]);
        }
    }
}

static void determinism(void **state)
{
    (void)state;
    for (uint32_t paging = 0; paging <= MV_PAGING_SHADOW; paging++) {
        struct mv_sim_guest_stats a[2], b[2], c[2];
        run("compile-like", paging, 9, a);
        run("compile-like", paging, 9, b);
        run("compile-like", paging, 10, c);
        assert_memory_equal(a, b, sizeof(a));
        assert_true(memcmp(a, c, sizeof(a)) != 0);
    }
}

static void bad_config(void **state)
{
    (void)state;
    mv_sim_t *s;
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 64 * TH_MiB};
    assert_int_equal(mv_sim_create(&c, &s), 0);
    struct mv_sim_run_config rc = {.size = sizeof(rc), .workload = "nope", .domains = 1,
                                   .vcpus = 1};
    mv_sim_run_t *r;
    assert_int_equal(mv_sim_run_create(s, &rc, &r), MV_ENOENT);
    rc.workload = "idle";
    rc.domains = 0;
    assert_int_equal(mv_sim_run_create(s, &rc, &r), MV_EINVAL);
    th_assert_audit_clean(mv_sim_host(s));
    mv_sim_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(presets_pv),
        cmocka_unit_test(presets_hap),
        cmocka_unit_test(presets_shadow),
        cmocka_unit_test(presets_shadow_floor),
        cmocka_unit_test(oos_on_off),
        cmocka_unit_test(determinism),
        cmocka_unit_test(bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * tests/test_sim_threads.c - the simulator's threaded mode: every preset in PV and HAP on
 * two domains of three vCPUs, one thread per vCPU, the oracle and the TLB check at every
 * invalidation while the engine's and the guests' shootdowns are in flight; then every
 * vCPU checked against the oracle on every page its process maps, and a clean audit.
 * Meant to run under ThreadSanitizer as well (suite 'concurrency').
 */
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "sim.h"

#define DOMS 2u
#define VCPUS 3u
#define STEPS 6000u

/* After the threads: each vCPU's process, page by page, through the vCPU and the oracle. */
static void final_check(mv_sim_t *s, mv_sim_run_t *r, const char *what)
{
    for (uint32_t i = 0; i < DOMS; i++) {
        mv_sim_guest_t *g = mv_sim_run_guest(r, i);
        mv_domain_t *d = mv_sim_guest_domain(g);
        for (uint32_t v = 0; v < VCPUS; v++) {
            mv_sim_vcpu_t *sv = mv_sim_vcpu(s, d, v);
            uint64_t va, pages;
            uint32_t prot;
            for (uint32_t m = 0; !mv_sim_guest_mapping(g, v, m, &va, &pages, &prot); m++)
                for (uint64_t k = 0; k < pages; k++) {
                    struct mv_sim_result a, o;
                    if (mv_sim_verify_page(sv, va + k * 4096, 0x1u, &a, &o))
                        fail_msg("%s dom %u vcpu %u va %#llx: vcpu %s, oracle %s", what, i + 1,
                                 v, (unsigned long long)(va + k * 4096),
                                 mv_sim_kind_name(a.kind), mv_sim_kind_name(o.kind));
                }
            struct mv_sim_tlb_report rep;
            if (mv_sim_tlb_check(sv, &rep))
                fail_msg("%s dom %u vcpu %u: %llu TLB violations (%s at %#llx)", what, i + 1, v,
                         (unsigned long long)rep.violations, rep.first_what,
                         (unsigned long long)rep.first_va);
        }
    }
}

static uint64_t run(const char *name, uint32_t paging, uint64_t seed)
{
    mv_sim_t *s;
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 256 * TH_MiB};
    assert_int_equal(mv_sim_create(&c, &s), 0);
    struct mv_sim_run_config rc = {.size = sizeof(rc), .workload = name, .domains = DOMS,
                                   .vcpus = VCPUS, .seed = seed, .hvm = paging != MV_PAGING_PV,
                                   .hap = paging == MV_PAGING_HAP, .check = true,
                                   .threaded = true};
    mv_sim_run_t *r;
    assert_int_equal(mv_sim_run_create(s, &rc, &r), 0);
    assert_true(mv_sim_threaded(s));
    char what[64];
    snprintf(what, sizeof(what), "%s %s", name, th_paging_name(paging));
    int e = mv_sim_run_steps(r, STEPS);
    if (e)
        fail_msg("%s: %s", what, mv_strerror(e));
    uint64_t ops = 0;
    for (uint32_t i = 0; i < DOMS; i++) {
        struct mv_sim_guest_stats st;
        mv_sim_guest_stats(mv_sim_run_guest(r, i), &st);
        if (st.mismatches || st.tlb_violations || st.content_errors || st.errors)
            fail_msg("%s dom %u: mismatches %llu tlb %llu content %llu errors %llu (%d)", what,
                     i + 1, (unsigned long long)st.mismatches,
                     (unsigned long long)st.tlb_violations,
                     (unsigned long long)st.content_errors, (unsigned long long)st.errors,
                     st.last_error);
        for (unsigned k = 0; k < MV_SIM_GOP_NR; k++)
            ops += st.ops[k];
    }
    assert_true(ops >= STEPS / 2);
    final_check(s, r, what);
    th_assert_audit_clean(mv_sim_host(s));
    uint64_t waits = mv_sim_flush_waits(s);
    mv_sim_run_destroy(r);
    th_assert_audit_clean(mv_sim_host(s));
    mv_sim_destroy(s);
    return waits;
}

static void presets(uint32_t paging)
{
    uint64_t waits = 0;
    for (unsigned i = 0; mv_sim_workload_name(i); i++)
        waits += run(mv_sim_workload_name(i), paging, 42 + i);
    print_message("%s: %llu shootdown(s) waited for a vCPU in guest code\n", th_paging_name(paging),
                  (unsigned long long)waits);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(presets_pv),
        cmocka_unit_test(presets_hap),
        cmocka_unit_test(presets_shadow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

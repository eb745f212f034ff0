/*
 * tests/test_sim_guest.c - the guest OS model in PV, HAP and shadow: demand faults fill pages with
 * the content the model expects; fork shares pages read-only and each side's writes stay
 * its own (copy-on-write by the guest's fault handler); munmap, mprotect, exec and exit
 * give every frame and table back; the oracle agrees at every invalidation and the audit
 * is clean.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "sim.h"

struct fx {
    mv_sim_t *s;
    mv_sim_guest_t *g;
};
static struct fx fx;

static void setup(uint32_t paging)
{
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 64 * TH_MiB};
    assert_int_equal(mv_sim_create(&c, &fx.s), 0);
    struct mv_sim_guest_config gc = {.size = sizeof(gc), .domid = 1, .nr_vcpus = 2,
                                     .hvm = paging != MV_PAGING_PV,
                                     .hap = paging == MV_PAGING_HAP, .mem_pages = 2048, .seed = 7,
                                     .zero_pct = 30, .pool_pct = 30, .check = true};
    assert_int_equal(mv_sim_guest_create(fx.s, &gc, &fx.g), 0);
}

static void teardown(void)
{
    struct mv_sim_guest_stats st;
    mv_sim_guest_stats(fx.g, &st);
    assert_int_equal(st.mismatches, 0);
    assert_int_equal(st.tlb_violations, 0);
    assert_int_equal(st.content_errors, 0);
    assert_int_equal(st.errors, 0);
    th_assert_audit_clean(mv_sim_host(fx.s));
    mv_sim_guest_destroy(fx.g);
    th_assert_audit_clean(mv_sim_host(fx.s));
    mv_sim_destroy(fx.s);
    memset(&fx, 0, sizeof(fx));
}

static uint64_t load(uint32_t vc, uint64_t va)
{
    uint64_t x = 0;
    assert_int_equal(mv_sim_guest_load(fx.g, vc, va, &x), 0);
    return x;
}

static void fork_cow(uint32_t paging)
{
    setup(paging);
    mv_sim_guest_t *g = fx.g;
    struct mv_sim_guest_stats st0, st;
    mv_sim_guest_stats(g, &st0);
    int parent, child;
    uint64_t va, fva;
    assert_int_equal(mv_sim_guest_spawn(g, 0, &parent), 0);
    assert_int_equal(mv_sim_guest_switch(g, 0, parent), 0);
    assert_int_equal(mv_sim_guest_mmap(g, 0, 64, MV_SIM_PROT_R | MV_SIM_PROT_W, 0, &va), 0);
    assert_int_equal(mv_sim_guest_mmap(g, 0, 8, MV_SIM_PROT_R | MV_SIM_PROT_X, 3, &fva), 0);
    for (unsigned i = 0; i < 64; i++)
        assert_int_equal(mv_sim_guest_write(g, 0, va + i * 4096ull), 0);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(mv_sim_guest_read(g, 0, fva + i * 4096ull), 0);
    uint64_t before = load(0, va);

    assert_int_equal(mv_sim_guest_fork(g, 0, parent, &child), 0);
    /* The child runs on vCPU 1 while the parent stays on vCPU 0. */
    assert_int_equal(mv_sim_guest_switch(g, 1, child), 0);
    assert_int_equal(load(1, va), before);
    for (unsigned i = 0; i < 64; i++)
        assert_int_equal(mv_sim_guest_read(g, 1, va + i * 4096ull), 0);

    /* Parent writes page 0: the child still sees the old bytes. */
    assert_int_equal(mv_sim_guest_write(g, 0, va), 0);
    uint64_t pnew = load(0, va);
    assert_true(pnew != before);
    assert_int_equal(load(1, va), before);
    /* Child writes page 0 and page 1: the parent keeps its own. */
    assert_int_equal(mv_sim_guest_write(g, 1, va), 0);
    assert_int_equal(mv_sim_guest_write(g, 1, va + 4096), 0);
    uint64_t cnew = load(1, va);
    assert_true(cnew != before && cnew != pnew);
    assert_int_equal(load(0, va), pnew);
    for (unsigned i = 0; i < 64; i++) {
        assert_int_equal(mv_sim_guest_read(g, 0, va + i * 4096ull), 0);
        assert_int_equal(mv_sim_guest_read(g, 1, va + i * 4096ull), 0);
    }
    mv_sim_guest_stats(g, &st);
    assert_true(st.faults[MV_SIM_GF_COW] >= 2);
    assert_true(st.faults[MV_SIM_GF_REUSE] >= 1); /* the last sharer of page 0 or 1 */

    /* Write to a read-only mapping: SIGSEGV, nothing changes. mprotect makes it writable. */
    assert_int_equal(mv_sim_guest_write(g, 0, fva), MV_EFAULT);
    assert_int_equal(mv_sim_guest_mprotect(g, 0, fva, MV_SIM_PROT_R | MV_SIM_PROT_W), 0);
    assert_int_equal(mv_sim_guest_write(g, 0, fva), 0);
    assert_int_equal(mv_sim_guest_read(g, 1, fva), 0); /* the child's copy is unchanged */
    assert_int_equal(mv_sim_guest_mprotect(g, 0, va, MV_SIM_PROT_R), 0);
    assert_int_equal(mv_sim_guest_write(g, 0, va + 8192), MV_EFAULT);
    assert_int_equal(mv_sim_guest_read(g, 0, va + 8192), 0);

    /* exec and exit give everything back. */
    assert_int_equal(mv_sim_guest_exec(g, 1, child), 0);
    assert_int_equal(mv_sim_guest_mmap(g, 1, 4, MV_SIM_PROT_R | MV_SIM_PROT_W, 0, &va), 0);
    assert_int_equal(mv_sim_guest_write(g, 1, va), 0);
    assert_int_equal(mv_sim_guest_munmap(g, 0, fva), 0);
    assert_int_equal(mv_sim_guest_exit(g, 1, child), 0);
    assert_int_equal(mv_sim_guest_exit(g, 0, parent), 0);
    mv_sim_guest_stats(g, &st);
    assert_int_equal(st.pages_free, st0.pages_free);
    assert_int_equal(st.page_tables, st0.page_tables);
    assert_int_equal(mv_sim_guest_current(g, 0), -1);
    teardown();
}

static void fork_cow_pv(void **state)
{
    (void)state;
    fork_cow(MV_PAGING_PV);
}

static void fork_cow_hap(void **state)
{
    (void)state;
    fork_cow(MV_PAGING_HAP);
}

static void fork_cow_shadow(void **state)
{
    (void)state;
    fork_cow(MV_PAGING_SHADOW);
}

/* A process on two vCPUs: a munmap on one shoots the other down (checked by the oracle). */
static void shootdown(uint32_t paging)
{
    setup(paging);
    mv_sim_guest_t *g = fx.g;
    int pid;
    uint64_t va;
    assert_int_equal(mv_sim_guest_spawn(g, 0, &pid), 0);
    assert_int_equal(mv_sim_guest_switch(g, 0, pid), 0);
    assert_int_equal(mv_sim_guest_switch(g, 1, pid), 0);
    assert_int_equal(mv_sim_guest_mmap(g, 0, 16, MV_SIM_PROT_R | MV_SIM_PROT_W, 0, &va), 0);
    for (unsigned i = 0; i < 16; i++) {
        assert_int_equal(mv_sim_guest_write(g, 0, va + i * 4096ull), 0);
        assert_int_equal(mv_sim_guest_read(g, 1, va + i * 4096ull), 0);
    }
    assert_int_equal(mv_sim_guest_munmap(g, 0, va), 0);
    assert_int_equal(mv_sim_guest_touch(g, 1, va), MV_EFAULT);
    struct mv_sim_guest_stats st;
    mv_sim_guest_stats(g, &st);
    assert_true(st.checks >= 32);
    assert_int_equal(mv_sim_guest_shootdown(g, 1), 0);
    assert_int_equal(mv_sim_guest_exit(g, 0, pid), 0);
    teardown();
}

static void shootdown_pv(void **state)
{
    (void)state;
    shootdown(MV_PAGING_PV);
}

static void shootdown_hap(void **state)
{
    (void)state;
    shootdown(MV_PAGING_HAP);
}

static void shootdown_shadow(void **state)
{
    (void)state;
    shootdown(MV_PAGING_SHADOW);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fork_cow_pv),
        cmocka_unit_test(fork_cow_hap),
        cmocka_unit_test(fork_cow_shadow),
        cmocka_unit_test(shootdown_pv),
        cmocka_unit_test(shootdown_hap),
        cmocka_unit_test(shootdown_shadow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * tests/test_logdirty_threads.c - log-dirty under real threads (ThreadSanitizer in CI):
 * two callers enabling and disabling at once (XSA-397) while a third writes guest memory
 * and a fourth harvests; the end state is one consistent state and the audit (I14
 * included) is clean.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

#define GFNS 4096u

static mv_host_t *h;
static mv_domain_t *d;
static _Atomic int stop;

static void *toggler(void *arg)
{
    struct th_rng rng = {.s = (uint64_t)(uintptr_t)arg};
    for (int i = 0; i < 400; i++) {
        int rc = th_rand_below(&rng, 2) ? mv_p2m_logdirty_enable(d) : mv_p2m_logdirty_disable(d);
        if (rc != 0 && rc != MV_EALREADY)
            return (void *)1;
    }
    return NULL;
}

static void *writer(void *arg)
{
    (void)arg;
    struct th_rng rng = {.s = 3};
    uint64_t v = 0;
    while (!atomic_load(&stop)) {
        mv_gfn_t g = th_rand_below(&rng, GFNS);
        v++;
        if (mv_guest_phys_write(d, g << MV_PAGE_SHIFT, &v, sizeof(v)))
            return (void *)1;
    }
    return NULL;
}

static void *harvester(void *arg)
{
    (void)arg;
    static uint64_t bm[GFNS / 64];
    while (!atomic_load(&stop)) {
        uint64_t done, dirty;
        int rc = mv_p2m_logdirty_peek_and_clean(d, 0, GFNS, bm, GFNS, &done, &dirty);
        if (rc != 0 && rc != MV_EPERM)
            return (void *)1;
    }
    return NULL;
}

static void test_enable_disable_race(void **state)
{
    (void)state;
    struct th_platform *tp;
    h = th_host_create(128 * TH_MiB, NULL, &tp);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 1, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 2, .max_pages = GFNS,
                                 .node_affinity = MV_NODE_ANY};
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    uint64_t done;
    for (mv_gfn_t g = 0; g < GFNS; g += 512)
        assert_int_equal(mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done), 0);
    atomic_store(&stop, 0);
    pthread_t t[4];
    assert_int_equal(pthread_create(&t[0], NULL, toggler, (void *)1), 0);
    assert_int_equal(pthread_create(&t[1], NULL, toggler, (void *)2), 0);
    assert_int_equal(pthread_create(&t[2], NULL, writer, NULL), 0);
    assert_int_equal(pthread_create(&t[3], NULL, harvester, NULL), 0);
    void *r0, *r1, *r2, *r3;
    pthread_join(t[0], &r0);
    pthread_join(t[1], &r1);
    atomic_store(&stop, 1);
    pthread_join(t[2], &r2);
    pthread_join(t[3], &r3);
    assert_null(r0);
    assert_null(r1);
    assert_null(r2);
    assert_null(r3);
    /* One state: logging with ram_logdirty (and dirty ram_rw) entries, or not at all. */
    struct mv_p2m_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_p2m_stats(d, &st), 0);
    if (!st.logdirty)
        assert_int_equal(st.pages_by_type[MV_P2M_RAM_LOGDIRTY], 0);
    assert_int_equal(st.pages_by_type[MV_P2M_RAM_LOGDIRTY] + st.pages_by_type[MV_P2M_RAM_RW],
                     GFNS);
    th_assert_audit_clean(h);
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enable_disable_race),
    };
    return cmocka_run_group_tests_name("logdirty_threads", tests, NULL, NULL);
}

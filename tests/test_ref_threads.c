/*
 * tests/test_ref_threads.c - reference and type traffic from real threads on shared
 * frames (run under ThreadSanitizer in CI): counts end exact, types never mix, and a frame
 * whose allocation reference is dropped while others hold it is freed exactly once.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

#define FRAMES 16
#define STEPS 100000

static mv_host_t *h;
static mv_domain_t *d;
static mv_mfn_t frames[FRAMES];

struct worker {
    uint64_t seed;
    uint64_t typed_w, typed_l1, busy, again;
    int error;
};

static void *traffic(void *arg)
{
    struct worker *w = arg;
    struct th_rng rng = {.s = w->seed};
    for (int i = 0; i < STEPS && !w->error; i++) {
        mv_mfn_t m = frames[th_rand_below(&rng, FRAMES)];
        switch (th_rand_below(&rng, 3)) {
        case 0:
            if (mv_page_get(d, m) || mv_page_put(d, m))
                w->error = 1;
            break;
        case 1: {
            int rc = mv_page_get_typed(d, m, MV_PGT_WRITABLE);
            if (rc == 0) {
                w->typed_w++;
                if (mv_page_put_typed(d, m))
                    w->error = 2;
            } else if (rc == MV_EBUSY) {
                w->busy++;
            } else {
                w->error = 3;
            }
            break;
        }
        default: {
            int rc = mv_page_get_typed(d, m, MV_PGT_L1);
            if (rc == MV_PAGE_VALIDATE) {
                if (mv_page_validated(d, m))
                    w->error = 4;
                rc = 0;
            }
            if (rc == 0) {
                w->typed_l1++;
                if (mv_page_put_typed(d, m))
                    w->error = 5;
            } else if (rc == MV_EBUSY) {
                w->busy++;
            } else if (rc == MV_EAGAIN) {
                w->again++; /* the other thread is validating it */
            } else {
                w->error = 6;
            }
            break;
        }
        }
    }
    return NULL;
}

static void test_shared_frame_traffic(void **state)
{
    (void)state;
    struct th_platform *tp;
    h = th_host_create(32 * TH_MiB, NULL, &tp);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 1, .type = MV_DOMAIN_PV,
                                 .paging = MV_PAGING_PV, .nr_vcpus = 2, .max_pages = 64,
                                 .node_affinity = MV_NODE_ANY};
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    for (int i = 0; i < FRAMES; i++)
        assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &frames[i]), 0);
    pthread_t t[2];
    struct worker w[2] = {{.seed = 1}, {.seed = 2}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, traffic, &w[i]), 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].error, 0);
        assert_true(w[i].typed_w > 0 && w[i].typed_l1 > 0);
    }
    for (int i = 0; i < FRAMES; i++) {
        struct mv_page_info pi = {.size = sizeof(pi)};
        assert_int_equal(mv_page_info(h, frames[i], &pi), 0);
        assert_int_equal(pi.refs, 1);
        assert_int_equal(pi.type_refs, 0);
    }
    th_assert_audit_clean(h);
    while (mv_domain_destroy(d) == MV_EAGAIN)
        ;
    th_host_destroy(h, tp);
}

/* The allocation reference goes while another thread takes and drops holds. */
static _Atomic int go;

static void *holder(void *arg)
{
    mv_mfn_t m = *(mv_mfn_t *)arg;
    while (!atomic_load(&go))
        ;
    for (int i = 0; i < 2000; i++) {
        if (mv_page_get(d, m) == 0)
            mv_page_put(d, m);
    }
    return NULL;
}

static void test_free_races_holds(void **state)
{
    (void)state;
    struct th_platform *tp;
    h = th_host_create(32 * TH_MiB, NULL, &tp);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 3, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 1, .max_pages = 64,
                                 .node_affinity = MV_NODE_ANY};
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    for (int round = 0; round < 100; round++) {
        mv_mfn_t m;
        assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &m), 0);
        atomic_store(&go, 0);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, holder, &m), 0);
        atomic_store(&go, 1);
        assert_int_equal(mv_domain_free_frames(d, m, 0), 0);
        pthread_join(t, NULL);
        struct mv_page_info pi = {.size = sizeof(pi)};
        assert_int_equal(mv_page_info(h, m, &pi), 0);
        assert_int_equal(pi.owner, UINT32_MAX); /* freed once, by whoever dropped last */
        assert_int_equal(pi.refs, 0);
    }
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.pages, 0);
    th_assert_audit_clean(h);
    while (mv_domain_destroy(d) == MV_EAGAIN)
        ;
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_frame_traffic),
        cmocka_unit_test(test_free_races_holds),
    };
    return cmocka_run_group_tests_name("ref_threads", tests, NULL, NULL);
}

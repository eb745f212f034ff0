/*
 * tests/test_p2m_threads.c - lock-free lookups while writers change the p2m (run under
 * ThreadSanitizer in CI): superpages populated, splintered, emptied and replaced so that
 * table frames are retired under the readers' feet; readers must only ever see whole
 * entries, and every retired table must come back once they leave.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

#define REGION 64u /* 2 MiB regions the writer cycles through */
#define ROUNDS 60

static mv_host_t *h;
static mv_domain_t *d;
static _Atomic int stop;

struct reader {
    uint64_t seed;
    uint64_t lookups, ram;
    int error;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    struct th_rng rng = {.s = r->seed};
    while (!atomic_load_explicit(&stop, memory_order_acquire) && !r->error) {
        mv_gfn_t g = th_rand_below(&rng, REGION * 512);
        struct mv_p2m_entry e;
        if (mv_p2m_lookup(d, g, &e)) {
            r->error = 1;
            break;
        }
        r->lookups++;
        if (e.type == MV_P2M_INVALID)
            continue;
        r->ram++;
        /* A whole entry: a RAM type, a frame inside machine memory, a leaf order we write. */
        if ((e.type != MV_P2M_RAM_RW && e.type != MV_P2M_RAM_RO) || mv_frame_node(h, e.mfn) < 0 ||
            (e.order != 0 && e.order != 9))
            r->error = 2;
    }
    return NULL;
}

static void writer_round(struct th_rng *rng, unsigned region)
{
    mv_gfn_t base = (mv_gfn_t)region * 512;
    uint64_t done;
    assert_int_equal(mv_populate_physmap(d, &base, 1, 9, MV_NODE_ANY, &done), 0);
    /* Retype part of it (splinters), give back every 4 KiB piece (empties the table). */
    mv_gfn_t first = base + th_rand_below(rng, 256);
    assert_int_equal(mv_p2m_change_type_range(d, first, 100, MV_P2M_RAM_RW, MV_P2M_RAM_RO,
                                              &done), 0);
    for (mv_gfn_t g = base; g < base + 512; g++)
        assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0);
    /* A superpage over the empty table retires it. */
    assert_int_equal(mv_populate_physmap(d, &base, 1, 9, MV_NODE_ANY, &done), 0);
    assert_int_equal(mv_decrease_reservation(d, &base, 1, 9, &done), 0);
}

static void test_lookups_during_updates(void **state)
{
    (void)state;
    struct th_platform *tp;
    h = th_host_create(256 * TH_MiB, NULL, &tp);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 1, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 2,
                                 .max_pages = REGION * 512, .node_affinity = MV_NODE_ANY};
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    atomic_store(&stop, 0);
    pthread_t t[2];
    struct reader r[2] = {{.seed = 11}, {.seed = 12}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, reader_main, &r[i]), 0);
    struct th_rng rng = {.s = 99};
    for (int round = 0; round < ROUNDS; round++)
        writer_round(&rng, (unsigned)th_rand_below(&rng, REGION));
    atomic_store_explicit(&stop, 1, memory_order_release);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].error, 0);
        assert_true(r[i].lookups > 0);
    }
    th_assert_audit_clean(h);
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    /* With no reader left, every retired table comes back: the host is whole again. */
    assert_int_equal(mv_host_drain(h), 0);
    struct mv_host_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_host_stats(h, &st), 0);
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookups_during_updates),
    };
    return cmocka_run_group_tests_name("p2m_threads", tests, NULL, NULL);
}

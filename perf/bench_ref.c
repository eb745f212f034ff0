/*
 * perf/bench_ref.c - references and page types (mm/ref.c).
 *
 *   mm/get_put_page       mv_page_get then mv_page_put on a domain frame; item = one pair
 *   mm/get_put_page_type  mv_page_get_typed(writable) then mv_page_put_typed; item = one pair
 *
 * With 1 and 2 threads; each thread walks its own 1024 frames of one domain, so two
 * threads measure the compare-and-swap paths side by side, not a single contended line.
 */
#include <stdio.h>
#include <stdlib.h>

#include <memvirt/memvirt.h>

#include "bench.h"
#include "fixture.h"

#define REF_FRAMES_PER_THREAD 1024u
#define REF_MAX_THREADS 2

struct ref_bench {
    const char *name;
    bool typed;
    mv_host_t *host;
    mv_domain_t *dom;
    mv_mfn_t frames[REF_MAX_THREADS * REF_FRAMES_PER_THREAD];
};

static int ref_setup(void *user, int threads)
{
    struct ref_bench *b = user;
    struct mv_host_config hc = {.size = sizeof hc, .mem_bytes = 256ull << 20,
                                .topology = "pack:1 numa:1 core:2 pu:1"};
    struct mv_domain_config dc = {.size = sizeof dc, .domid = 1, .type = MV_DOMAIN_PV,
                                  .paging = MV_PAGING_PV, .nr_vcpus = 1,
                                  .max_pages = REF_MAX_THREADS * REF_FRAMES_PER_THREAD,
                                  .node_affinity = MV_NODE_ANY};
    int rc;
    if (threads > REF_MAX_THREADS)
        return -1;
    if ((rc = mv_host_create(&hc, &b->host)))
        return rc;
    if ((rc = mv_domain_create(b->host, &dc, &b->dom)))
        return rc;
    for (unsigned i = 0; i < REF_MAX_THREADS * REF_FRAMES_PER_THREAD; i++)
        if ((rc = mv_domain_alloc_frames(b->dom, 0, MV_NODE_ANY, 0, &b->frames[i])))
            return rc;
    return 0;
}

static void ref_teardown(void *user, int threads)
{
    struct ref_bench *b = user;
    (void)threads;
    mvb_fixture_teardown(b->name, b->host, &b->dom, 1);
    b->host = NULL;
    b->dom = NULL;
}

static void ref_run(mvb_state_t *st, void *user)
{
    struct ref_bench *b = user;
    const mv_mfn_t *mine = &b->frames[mvb_thread_index(st) * REF_FRAMES_PER_THREAD];
    mv_domain_t *d = b->dom;
    uint64_t n, k = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++, k++) {
            mv_mfn_t m = mine[k % REF_FRAMES_PER_THREAD];
            int rc = b->typed ? mv_page_get_typed(d, m, MV_PGT_WRITABLE) : mv_page_get(d, m);
            if (rc == 0)
                rc = b->typed ? mv_page_put_typed(d, m) : mv_page_put(d, m);
            if (rc) {
                mvb_skip_with_error(st, mv_strerror_name(rc));
                break;
            }
        }
    }
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

static struct ref_bench get_put = {.name = "mm/get_put_page"};
static struct ref_bench get_put_type = {.name = "mm/get_put_page_type", .typed = true};

void mvb_register_ref(void)
{
    struct ref_bench *all[] = {&get_put, &get_put_type};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (mvb_register(&(struct mvb_bench){.name = all[i]->name,
                                             .run = ref_run,
                                             .user = all[i],
                                             .setup = ref_setup,
                                             .teardown = ref_teardown,
                                             .threads = {1, 2},
                                             .flags = MVB_REAL_TIME}) != 0) {
            fprintf(stderr, "memvirt-bench: cannot register %s\n", all[i]->name);
            exit(1);
        }
    }
}

/*
 * perf/bench_pv.c - PV page-table updates (pv/).
 *
 *   pv/l1_update_batched          mv_pv_mmu_update with 512 requests per call, each a new
 *                                 writable mapping in a pinned L1 (the call alternates
 *                                 between two sets of 512 frames the domain owns, so every
 *                                 update takes the new frame's reference and writable type
 *                                 and drops the old one's); item = one L1 update
 *   baseline/pte_write_unchecked  the same 512-entry writes into the same table frame with
 *                                 plain stores and no checks; item = one entry write
 *   pv/pin_l4_1g                  pin (timed) and unpin (not timed) of an L4 tree mapping
 *                                 1 GiB (512 L1s, 2^18 data frames, 2/3 of them writable)
 *                                 with an unlimited budget; item = one entry validated
 *
 * One thread (a domain's PV calls serialize on its lock).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <memvirt/memvirt.h>

#include "bench.h"
#include "fixture.h"

#define PTE_TABLE (MV_PTE_P | MV_PTE_RW | MV_PTE_US | MV_PTE_A)

static uint64_t pte(mv_mfn_t m, uint64_t fl)
{
    return (m << MV_PAGE_SHIFT) | fl;
}

/* ---- pv/l1_update_batched and baseline/pte_write_unchecked ------------------------------- */

struct upd_bench {
    const char *name;
    bool unchecked;
    mv_host_t *host;
    mv_domain_t *dom;
    mv_vcpu_t *vcpu;
    mv_mfn_t l1;
    uint64_t *table;
    struct mv_pv_mmu_update req[2][512];
};

static int upd_setup(void *user, int threads)
{
    struct upd_bench *b = user;
    struct mv_host_config hc = {.size = sizeof hc, .mem_bytes = 64ull << 20,
                                .topology = "pack:1 numa:1 core:1 pu:1"};
    struct mv_domain_config dc = {.size = sizeof dc, .domid = 1, .type = MV_DOMAIN_PV,
                                  .paging = MV_PAGING_PV, .nr_vcpus = 1, .max_pages = 2048,
                                  .node_affinity = MV_NODE_ANY};
    int rc;
    (void)threads;
    if ((rc = mv_host_create(&hc, &b->host)) || (rc = mv_domain_create(b->host, &dc, &b->dom)))
        return rc;
    b->vcpu = mv_domain_vcpu(b->dom, 0);
    if ((rc = mv_domain_alloc_frames(b->dom, 0, MV_NODE_ANY, MV_ALLOC_ZERO, &b->l1)))
        return rc;
    b->table = mv_frame_va(b->host, b->l1);
    for (unsigned s = 0; s < 2; s++) {
        mv_mfn_t base;
        if ((rc = mv_domain_alloc_frames(b->dom, 9, MV_NODE_ANY, 0, &base)))
            return rc;
        for (unsigned i = 0; i < 512; i++)
            b->req[s][i] = (struct mv_pv_mmu_update){
                .ptr = (b->l1 << MV_PAGE_SHIFT) + 8ull * i,
                .val = pte(base + i, MV_PTE_P | MV_PTE_RW | MV_PTE_US | MV_PTE_A | MV_PTE_D)};
    }
    struct mv_pv_mmuext_op pin = {.cmd = MV_PV_PIN_L1_TABLE, .arg = b->l1};
    uint32_t done;
    return mv_pv_mmuext_op(b->vcpu, &pin, 1, &done);
}

static void upd_teardown(void *user, int threads)
{
    struct upd_bench *b = user;
    (void)threads;
    mvb_fixture_teardown(b->name, b->host, &b->dom, 1);
    b->host = NULL;
    b->dom = NULL;
}

static void upd_run(mvb_state_t *st, void *user)
{
    struct upd_bench *b = user;
    uint64_t n, k = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++, k++) {
            const struct mv_pv_mmu_update *r = b->req[k & 1];
            if (b->unchecked) {
                volatile uint64_t *t = b->table;
                for (unsigned j = 0; j < 512; j++)
                    t[(r[j].ptr >> 3) & 511] = r[j].val;
                continue;
            }
            uint32_t done;
            int rc = mv_pv_mmu_update(b->vcpu, r, 512, &done);
            if (rc) {
                mvb_skip_with_error(st, mv_strerror_name(rc));
                break;
            }
        }
        if (mvb_error_occurred(st))
            break;
    }
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st) * 512);
}

static struct upd_bench upd_checked = {.name = "pv/l1_update_batched"};
static struct upd_bench upd_unchecked = {.name = "baseline/pte_write_unchecked",
                                         .unchecked = true};

/* ---- pv/pin_l4_1g ------------------------------------------------------------------------- */

#define PIN_L1S 512u

struct pin_bench {
    mv_host_t *host;
    mv_domain_t *dom;
    mv_vcpu_t *vcpu;
    mv_mfn_t l4, l3, l2;
};

static struct pin_bench pin_b;

static int pin_setup(void *user, int threads)
{
    struct pin_bench *b = user;
    struct mv_host_config hc = {.size = sizeof hc, .mem_bytes = 1280ull << 20,
                                .topology = "pack:1 numa:1 core:1 pu:1"};
    struct mv_domain_config dc = {.size = sizeof dc, .domid = 1, .type = MV_DOMAIN_PV,
                                  .paging = MV_PAGING_PV, .nr_vcpus = 1,
                                  .max_pages = PIN_L1S * 513 + 8, .node_affinity = MV_NODE_ANY};
    int rc;
    (void)threads;
    if ((rc = mv_host_create(&hc, &b->host)) || (rc = mv_domain_create(b->host, &dc, &b->dom)))
        return rc;
    b->vcpu = mv_domain_vcpu(b->dom, 0);
    mv_mfn_t *ids[3] = {&b->l4, &b->l3, &b->l2};
    for (unsigned i = 0; i < 3; i++)
        if ((rc = mv_domain_alloc_frames(b->dom, 0, MV_NODE_ANY, MV_ALLOC_ZERO, ids[i])))
            return rc;
    uint64_t *t4 = mv_frame_va(b->host, b->l4), *t3 = mv_frame_va(b->host, b->l3);
    uint64_t *t2 = mv_frame_va(b->host, b->l2);
    t4[0] = pte(b->l3, PTE_TABLE);
    t3[0] = pte(b->l2, PTE_TABLE);
    for (unsigned i = 0; i < PIN_L1S; i++) {
        mv_mfn_t l1, base;
        if ((rc = mv_domain_alloc_frames(b->dom, 0, MV_NODE_ANY, MV_ALLOC_ZERO, &l1)) ||
            (rc = mv_domain_alloc_frames(b->dom, 9, MV_NODE_ANY, 0, &base)))
            return rc;
        t2[i] = pte(l1, PTE_TABLE);
        uint64_t *t1 = mv_frame_va(b->host, l1);
        for (unsigned k = 0; k < 512; k++)
            t1[k] = pte(base + k, MV_PTE_P | MV_PTE_US | (k % 3 ? MV_PTE_RW : 0));
    }
    return mv_pv_set_budget(b->dom, UINT32_MAX);
}

static void pin_teardown(void *user, int threads)
{
    struct pin_bench *b = user;
    (void)threads;
    mvb_fixture_teardown("pv/pin_l4_1g", b->host, &b->dom, 1);
    b->host = NULL;
    b->dom = NULL;
}

static int pin_op(struct pin_bench *b, uint32_t cmd)
{
    struct mv_pv_mmuext_op op = {.cmd = cmd, .arg = b->l4};
    uint32_t done;
    int rc;
    while ((rc = mv_pv_mmuext_op(b->vcpu, &op, 1, &done)) == MV_EAGAIN && done == 0)
        ;
    while (rc == MV_EAGAIN)
        rc = mv_pv_mmuext_op(b->vcpu, NULL, 0, &done);
    return rc;
}

static void pin_run(mvb_state_t *st, void *user)
{
    struct pin_bench *b = user;
    uint64_t n;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            int rc = pin_op(b, MV_PV_PIN_L4_TABLE);
            mvb_pause_timing(st);
            if (!rc)
                rc = pin_op(b, MV_PV_UNPIN_TABLE);
            mvb_resume_timing(st);
            if (rc) {
                mvb_skip_with_error(st, mv_strerror_name(rc));
                break;
            }
        }
        if (mvb_error_occurred(st))
            break;
    }
    /* Entries examined per pin: the L4, the L3, the L2 and every L1. */
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st) * (3 + PIN_L1S) * 512ull);
}

/* ---- Registration ------------------------------------------------------------------------ */

static void must_register(const struct mvb_bench *b)
{
    if (mvb_register(b) != 0) {
        fprintf(stderr, "memvirt-bench: cannot register %s\n", b->name);
        exit(1);
    }
}

void mvb_register_pv(void)
{
    struct upd_bench *u[] = {&upd_checked, &upd_unchecked};
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++)
        must_register(&(struct mvb_bench){.name = u[i]->name,
                                          .run = upd_run,
                                          .user = u[i],
                                          .setup = upd_setup,
                                          .teardown = upd_teardown,
                                          .threads = {1}});
    must_register(&(struct mvb_bench){.name = "pv/pin_l4_1g",
                                      .run = pin_run,
                                      .user = &pin_b,
                                      .setup = pin_setup,
                                      .teardown = pin_teardown,
                                      .threads = {1}});
    if (mvb_register_ratio("pv/l1_update_batched", "baseline/pte_write_unchecked", 0) != 0) {
        fprintf(stderr, "memvirt-bench: cannot register the pv ratio\n");
        exit(1);
    }
}

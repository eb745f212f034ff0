/*
 * tests/pv_helpers.h - what the PV suites share: domains, frames, entries, single-item
 * calls, loops that continue preempted calls, tree builders and a state digest.
 */
#ifndef MV_TEST_PV_HELPERS_H
#define MV_TEST_PV_HELPERS_H

#include <string.h>

#include "harness.h"

#define PTE_P MV_PTE_P
#define PTE_RW MV_PTE_RW
#define PTE_US MV_PTE_US
#define PTE_A MV_PTE_A
#define PTE_D MV_PTE_D
#define PTE_TABLE (MV_PTE_P | MV_PTE_RW | MV_PTE_US | MV_PTE_A)

static inline uint64_t pte(mv_mfn_t m, uint64_t flags)
{
    return (m << MV_PAGE_SHIFT) | flags;
}

static inline mv_domain_t *pvh_domain(mv_host_t *h, uint32_t domid, uint64_t max_pages,
                                      uint32_t flags, uint32_t nr_vcpus)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = domid, .type = MV_DOMAIN_PV,
                                 .paging = MV_PAGING_PV, .nr_vcpus = nr_vcpus,
                                 .max_pages = max_pages, .node_affinity = MV_NODE_ANY,
                                 .flags = flags};
    mv_domain_t *d = NULL;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    return d;
}

static inline void pvh_destroy(mv_domain_t *d)
{
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
}

static inline mv_mfn_t pvh_frame(mv_domain_t *d)
{
    mv_mfn_t m;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, MV_ALLOC_ZERO, &m), 0);
    return m;
}

static inline uint64_t *pvh_tab(mv_host_t *h, mv_mfn_t m)
{
    return (uint64_t *)mv_frame_va(h, m);
}

static inline struct mv_page_info pvh_info(mv_host_t *h, mv_mfn_t m)
{
    struct mv_page_info pi;
    memset(&pi, 0, sizeof(pi));
    pi.size = sizeof(pi);
    assert_int_equal(mv_page_info(h, m, &pi), 0);
    return pi;
}

static inline struct mv_pv_stats pvh_stats(mv_domain_t *d)
{
    struct mv_pv_stats st;
    memset(&st, 0, sizeof(st));
    st.size = sizeof(st);
    assert_int_equal(mv_pv_stats(d, &st), 0);
    return st;
}

/* One mmu_update request; the raw result. */
static inline int pvh_upd(mv_vcpu_t *v, uint64_t ptr, uint64_t val)
{
    struct mv_pv_mmu_update r = {.ptr = ptr, .val = val};
    uint32_t done = 99;
    int rc = mv_pv_mmu_update(v, &r, 1, &done);
    if (rc == 0)
        assert_int_equal(done, 1);
    else if (rc != MV_EAGAIN)
        assert_int_equal(done, 0);
    return rc;
}

static inline mv_mfn_t pv_mfn_of(uint64_t e)
{
    return (e & MV_PTE_ADDR_MASK) >> MV_PAGE_SHIFT;
}

/* Entry address of slot i of table m. */
static inline uint64_t pvh_ptr(mv_mfn_t m, unsigned i)
{
    return (m << MV_PAGE_SHIFT) + 8ull * i;
}

/* One mmuext op, raw. */
static inline int pvh_op(mv_vcpu_t *v, uint32_t cmd, uint64_t arg)
{
    struct mv_pv_mmuext_op o = {.cmd = cmd, .arg = arg};
    uint32_t done = 99;
    int rc = mv_pv_mmuext_op(v, &o, 1, &done);
    if (rc != 0 && rc != MV_EAGAIN)
        assert_int_equal(done, 0);
    return rc;
}

/* One mmuext op, repeated while preempted (and settled afterwards); the final result. */
static inline int pvh_op_all(mv_vcpu_t *v, uint32_t cmd, uint64_t arg, unsigned *calls)
{
    struct mv_pv_mmuext_op o = {.cmd = cmd, .arg = arg};
    uint32_t done;
    int rc;
    unsigned n = 0;
    for (;;) {
        rc = mv_pv_mmuext_op(v, &o, 1, &done);
        n++;
        if (rc != MV_EAGAIN || done == 1)
            break;
    }
    /* Done, with a release possibly continuing: settle it. */
    while (rc == MV_EAGAIN) {
        rc = mv_pv_mmuext_op(v, NULL, 0, &done);
        n++;
    }
    if (calls)
        *calls = n;
    return rc;
}

/* Settle whatever the vCPU has open. */
static inline void pvh_settle(mv_vcpu_t *v)
{
    uint32_t done;
    int rc;
    while ((rc = mv_pv_mmuext_op(v, NULL, 0, &done)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
}

/*
 * An address space: one L4, `nl3` L3s... built bottom-up in raw memory (the guest writes
 * its new tables while they are still ordinary frames), mapping `nr_data` data frames
 * through as many L1s as needed, writable when `rw`.
 */
struct pvh_space {
    mv_mfn_t l4;
    mv_mfn_t l3;
    mv_mfn_t l2;
    mv_mfn_t l1[512];
    unsigned nr_l1;
    mv_mfn_t *data;
    unsigned nr_data;
};

/* Fill a space; data frames are given (shared between spaces when the caller wants). */
static inline void pvh_build(mv_host_t *h, mv_domain_t *d, struct pvh_space *s, mv_mfn_t *data,
                             unsigned nr_data, bool rw)
{
    memset(s, 0, sizeof(*s));
    s->data = data;
    s->nr_data = nr_data;
    s->l4 = pvh_frame(d);
    s->l3 = pvh_frame(d);
    s->l2 = pvh_frame(d);
    pvh_tab(h, s->l4)[0] = pte(s->l3, PTE_TABLE);
    pvh_tab(h, s->l3)[0] = pte(s->l2, PTE_TABLE);
    s->nr_l1 = (nr_data + 511) / 512;
    assert_true(s->nr_l1 <= 512);
    for (unsigned i = 0; i < s->nr_l1; i++) {
        s->l1[i] = pvh_frame(d);
        pvh_tab(h, s->l2)[i] = pte(s->l1[i], PTE_TABLE);
    }
    for (unsigned i = 0; i < nr_data; i++)
        pvh_tab(h, s->l1[i / 512])[i % 512] = pte(data[i], PTE_P | PTE_US | (rw ? PTE_RW : 0));
}

/* FNV-1a over 64-bit words. */
static inline uint64_t pvh_fold(uint64_t hsh, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        hsh ^= (v >> (8 * i)) & 0xff;
        hsh *= 0x100000001b3ull;
    }
    return hsh;
}

/*
 * The engine's state as a guest could observe it: every frame's descriptor (owner,
 * references, type, type references, flags, gfn), the contents of every frame a domain
 * owns, each domain's statistics and its PV statistics of present state (tables, partial,
 * pinned) and its base pointers. History counters (refusals, validations) are left out.
 */
static inline uint64_t pvh_digest(mv_host_t *h, mv_domain_t *const *doms, unsigned nr)
{
    uint64_t hsh = 0xcbf29ce484222325ull;
    const struct mv_topology *topo = mv_host_topology(h);
    for (uint32_t n = 0; n < topo->nr_nodes; n++) {
        for (uint64_t i = 0; i < topo->node[n].nr_frames; i++) {
            mv_mfn_t m = topo->node[n].first_mfn + i;
            struct mv_page_info pi = pvh_info(h, m);
            hsh = pvh_fold(hsh, ((uint64_t)pi.owner << 32) | pi.refs);
            /* A type whose count is zero is no type: any use may take the frame. */
            hsh = pvh_fold(hsh, ((uint64_t)(pi.type_refs ? pi.type : 0) << 32) | pi.type_refs);
            hsh = pvh_fold(hsh, ((uint64_t)pi.flags << 32) | pi.node);
            hsh = pvh_fold(hsh, pi.gfn);
            if (pi.owner != UINT32_MAX) {
                const uint64_t *t = pvh_tab(h, m);
                for (unsigned k = 0; k < 512; k++)
                    if (t[k])
                        hsh = pvh_fold(hsh, ((uint64_t)k << 52) ^ t[k]);
            }
        }
    }
    for (unsigned i = 0; i < nr; i++) {
        struct mv_domain_stats ds = {.size = sizeof(ds)};
        assert_int_equal(mv_domain_stats(doms[i], &ds), 0);
        hsh = pvh_fold(hsh, ds.pages);
        hsh = pvh_fold(hsh, ds.max_pages);
        hsh = pvh_fold(hsh, ds.overhead_pages);
        hsh = pvh_fold(hsh, ds.overhead_bytes);
        struct mv_pv_stats ps = pvh_stats(doms[i]);
        for (unsigned l = 0; l < 4; l++)
            hsh = pvh_fold(hsh, ps.tables[l]);
        hsh = pvh_fold(hsh, ps.partial);
        hsh = pvh_fold(hsh, ps.pinned);
        struct mv_domain_stats dd = {.size = sizeof(dd)};
        assert_int_equal(mv_domain_stats(doms[i], &dd), 0);
        for (uint32_t v = 0; v < dd.nr_vcpus; v++) {
            mv_mfn_t k, u;
            assert_int_equal(mv_pv_get_baseptrs(mv_domain_vcpu(doms[i], v), &k, &u), 0);
            hsh = pvh_fold(hsh, k);
            hsh = pvh_fold(hsh, u);
        }
    }
    return hsh;
}

#endif

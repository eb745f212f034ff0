/*
 * tests/p2m_model.c - the p2m differential test: seeded random populate, decrease, type
 * changes over arbitrary ranges and set_entry unmaps, against a flat reference model;
 * every lookup compared every 64 steps, the audit every `audit_every` steps and at the end.
 * Shared by test_p2m (a short run) and test_p2m_stress (a million steps).
 */
#include <string.h>

#include "harness.h"
#include "p2m_model.h"

static struct mv_p2m_entry look(mv_domain_t *d, mv_gfn_t gfn)
{
    struct mv_p2m_entry e;
    assert_int_equal(mv_p2m_lookup(d, gfn, &e), 0);
    return e;
}


#define DIFF_GFNS 8192u

struct model {
    mv_mfn_t mfn[DIFF_GFNS];
    uint8_t type[DIFF_GFNS];
};

static void model_check(mv_domain_t *d, const struct model *m)
{
    for (mv_gfn_t x = 0; x < DIFF_GFNS; x++) {
        struct mv_p2m_entry e = look(d, x);
        if (e.type != m->type[x] || (e.type != MV_P2M_INVALID && e.mfn != m->mfn[x]))
            fail_msg("gfn %llu: p2m type %u mfn %#llx, model type %u mfn %#llx",
                     (unsigned long long)x, e.type, (unsigned long long)e.mfn, m->type[x],
                     (unsigned long long)m->mfn[x]);
    }
}

void p2m_run_differential(mv_host_t *h, uint64_t seed, uint64_t steps, uint64_t audit_every)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = 11, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 1, .max_pages = DIFF_GFNS,
                                 .node_affinity = MV_NODE_ANY};
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    static struct model m;
    memset(&m, 0, sizeof(m));
    struct th_rng rng = {.s = seed};
    static const unsigned orders[] = {0, 0, 0, 3, 9};
    for (uint64_t step = 0; step < steps; step++) {
        unsigned order = orders[th_rand_below(&rng, 5)];
        uint64_t n = 1ull << order;
        mv_gfn_t gfn = th_rand_below(&rng, DIFF_GFNS / n) * n;
        uint64_t done;
        switch (th_rand_below(&rng, 4)) {
        case 0: { /* populate */
            bool empty = true;
            for (uint64_t i = 0; i < n; i++)
                empty &= m.type[gfn + i] == MV_P2M_INVALID;
            int rc = mv_populate_physmap(d, &gfn, 1, order, MV_NODE_ANY, &done);
            if (!empty) {
                assert_int_equal(rc, MV_EEXIST);
                break;
            }
            if (rc == MV_ENOSPC)
                break;
            assert_int_equal(rc, 0);
            for (uint64_t i = 0; i < n; i++) {
                m.type[gfn + i] = MV_P2M_RAM_RW;
                m.mfn[gfn + i] = look(d, gfn + i).mfn;
            }
            break;
        }
        case 1: { /* decrease */
            bool full = true;
            for (uint64_t i = 0; i < n; i++)
                full &= m.type[gfn + i] != MV_P2M_INVALID;
            int rc = mv_decrease_reservation(d, &gfn, 1, order, &done);
            if (!full) {
                assert_int_equal(rc, MV_ENOENT);
                break;
            }
            assert_int_equal(rc, 0);
            for (uint64_t i = 0; i < n; i++)
                m.type[gfn + i] = MV_P2M_INVALID;
            break;
        }
        case 2: { /* change type over an arbitrary range */
            uint64_t len = 1 + th_rand_below(&rng, 700);
            mv_gfn_t first = th_rand_below(&rng, DIFF_GFNS - len);
            unsigned from = th_rand_below(&rng, 2) ? MV_P2M_RAM_RW : MV_P2M_RAM_RO;
            unsigned to = from == MV_P2M_RAM_RW ? MV_P2M_RAM_RO : MV_P2M_RAM_RW;
            assert_int_equal(mv_p2m_change_type_range(d, first, len, from, to, &done), 0);
            for (uint64_t i = 0; i < len; i++)
                if (m.type[first + i] == from)
                    m.type[first + i] = (uint8_t)to;
            break;
        }
        default: { /* unmap a single gfn with set_entry, keeping the frame */
            mv_gfn_t x = th_rand_below(&rng, DIFF_GFNS);
            if (m.type[x] == MV_P2M_INVALID)
                break;
            mv_mfn_t f = m.mfn[x];
            assert_int_equal(mv_p2m_set_entry(d, x, MV_INVALID_MFN, 0, MV_P2M_INVALID, 0), 0);
            assert_int_equal(mv_domain_free_frames(d, f, 0), 0);
            m.type[x] = MV_P2M_INVALID;
            break;
        }
        }
        if (step % 64 == 0)
            model_check(d, &m);
        if (audit_every && step % audit_every == 0)
            th_assert_audit_clean(h);
    }
    model_check(d, &m);
    th_assert_audit_clean(h);
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    th_assert_audit_clean(h);
}


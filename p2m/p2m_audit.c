/*
 * p2m/p2m_audit.c - the p2m's part of mv_host_audit(): I9 and I10, and the statistics.
 *
 * I9: every RAM leaf maps frames the domain owns (or shared ones), holding their allocation
 * reference, whose m2p back-pointer names exactly that gfn; and every domain frame whose
 * back-pointer names a gfn is mapped there (so a private frame sits at one gfn only).
 * I10: special marks only on RAM 4 KiB entries. I14: while logging, every ram_rw entry's
 * pages have their dirty bits set. Also: leaf counts per order and type and
 * the table-frame count agree with a walk; table frames are engine-internal.
 */
#include "p2m-internal.h"

struct p2m_tally {
    uint64_t leaves[3];
    uint64_t pages_by_type[MV_P2M_NR_TYPES];
    uint64_t tables;
};

#define BAD(ac, inv, what, mfn, dom, exp, found) \
    mv__audit_report(ac, inv, what, mfn, dom, exp, found)

static void audit_tree(mv_host_t *h, struct mv_audit_ctx *ac, const mv_domain_t *d,
                       mv_mfn_t table, unsigned lv, mv_gfn_t base, struct p2m_tally *t)
{
    const struct mv_p2m *p = p2m_of(d);
    struct mv_frame *tf = mv__frame(h, table);
    if (!tf || mv__frame_owner(tf) != MV_OWNER_INTERNAL) {
        BAD(ac, "I1", "p2m-table-not-internal", table, d->domid, MV_OWNER_INTERNAL,
            tf ? mv__frame_owner(tf) : 0);
        return;
    }
    t->tables++;
    const mv_ept_t *e = ept_va(h, table);
    for (unsigned i = 0; i < EPT_ENTRIES; i++) {
        mv_ept_t x = e[i];
        mv_gfn_t gfn = base + ((mv_gfn_t)i << (9 * lv));
        if (!x)
            continue;
        if (ept_is_table(x, lv)) {
            audit_tree(h, ac, d, ept_mfn(x), lv - 1, gfn, t);
            continue;
        }
        if (lv > 2) {
            BAD(ac, "I9", "p2m-leaf-at-l4", table, d->domid, 0, x);
            continue;
        }
        unsigned type = ept_type(x);
        uint64_t span = 1ull << (9 * lv);
        t->leaves[lv]++;
        if (type < MV_P2M_NR_TYPES)
            t->pages_by_type[type] += span;
        if ((x & EPT_SPECIAL) && (lv || !p2m_is_ram(type)))
            BAD(ac, "I10", "special-not-ram-4k", ept_mfn(x), d->domid, 0, x);
        if ((x & EPT_RWX) & ~p2m_type_rights(type))
            BAD(ac, "I9", "p2m-rights-beyond-type", ept_mfn(x), d->domid,
                p2m_type_rights(type), x & EPT_RWX);
        if (!p2m_is_ram(type))
            continue;
        /* I14: while logging, whatever the guest may write is marked dirty. */
        if (type == MV_P2M_RAM_RW && (x & EPT_W) && p->logdirty)
            for (uint64_t j = 0; j < span; j++)
                if (!mv__p2m_is_dirty(p, gfn + j)) {
                    BAD(ac, "I14", "writable-but-clean", ept_mfn(x) + j, d->domid, 1, 0);
                    break;
                }
        for (uint64_t j = 0; j < span; j++) {
            mv_mfn_t m = ept_mfn(x) + j;
            struct mv_frame *f = mv__frame(h, m);
            if (!f) {
                BAD(ac, "I9", "p2m-maps-outside-ram", m, d->domid, 0, gfn + j);
                break;
            }
            uint32_t owner = mv__frame_owner(f);
            uint64_t m2p = atomic_load_explicit(&f->link, memory_order_relaxed);
            if (owner != d->domid && owner != MV_OWNER_SHARED)
                BAD(ac, "I9", "p2m-maps-foreign-frame", m, d->domid, d->domid, owner);
            else if (owner == d->domid && m2p != gfn + j)
                BAD(ac, "I9", "m2p-disagrees", m, d->domid, gfn + j, m2p);
            if (owner == d->domid &&
                !(atomic_load_explicit(&f->flags, memory_order_relaxed) & MV_PGF_ALLOCATED))
                BAD(ac, "I3", "p2m-frame-without-allocation-ref", m, d->domid, 1, 0);
        }
    }
}

void mv__p2m_audit(mv_host_t *h, struct mv_audit_ctx *ac);

void mv__p2m_audit(mv_host_t *h, struct mv_audit_ctx *ac)
{
    for (uint32_t id = 0; id <= MV_DOMID_MAX; id++) {
        mv_domain_t *d = mv__domain_of_owner(h, id);
        struct mv_p2m *p = d ? p2m_of(d) : NULL;
        if (!p || p->root == MV_INVALID_MFN)
            continue;
        struct p2m_tally t = {0};
        audit_tree(h, ac, d, p->root, P2M_LEVELS - 1, 0, &t);
        for (unsigned l = 0; l < 3; l++)
            if (t.leaves[l] != p->leaves[l])
                BAD(ac, "I9", "p2m-leaf-count", MV_INVALID_MFN, id, p->leaves[l], t.leaves[l]);
        for (unsigned ty = 0; ty < MV_P2M_NR_TYPES; ty++)
            if (ty != MV_P2M_INVALID && t.pages_by_type[ty] != p->pages_by_type[ty])
                BAD(ac, "I9", "p2m-type-count", MV_INVALID_MFN, id, p->pages_by_type[ty],
                    t.pages_by_type[ty]);
        uint64_t tf = atomic_load_explicit(&p->table_frames, memory_order_relaxed);
        if (t.tables != tf)
            BAD(ac, "I1", "p2m-table-count", MV_INVALID_MFN, id, tf, t.tables);
    }
    /* The other direction: a frame whose back-pointer names a gfn is mapped there. */
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        for (uint64_t j = 0; j < n->nr_frames; j++) {
            struct mv_frame *f = &n->ft[j];
            uint32_t owner = mv__frame_owner(f);
            if (owner > MV_DOMID_MAX)
                continue;
            uint64_t m2p = atomic_load_explicit(&f->link, memory_order_relaxed);
            if (m2p == MV_INVALID_GFN)
                continue;
            mv_domain_t *d = mv__domain_of_owner(h, owner);
            struct mv_p2m_entry e;
            if (!d || mv_p2m_lookup(d, m2p, &e) || e.mfn != n->first_mfn + j ||
                !p2m_is_ram(e.type))
                BAD(ac, "I9", "m2p-names-unmapped-gfn", n->first_mfn + j, owner, m2p,
                    d && !mv_p2m_lookup(d, m2p, &e) ? e.mfn : MV_INVALID_MFN);
        }
    }
}

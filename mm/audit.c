/*
 * mm/audit.c - mv_host_audit(): the truth about machine memory.
 *
 * Machine part (I1): every frame is in exactly one state, and each state's bookkeeping
 * agrees with a walk of the structures that hold it:
 *  - free: reached exactly once through a buddy list, inside a well-formed block (aligned,
 *    in its node, head marked with the list's order); per-order and per-node counts exact;
 *  - pending: reached exactly once through the decommit queue, nothing being decommitted;
 *  - cached: in exactly one slot cache, of its own node;
 *  - held (a domain, the engine, the embedder, shared): in a well-formed allocated block,
 *    on no list; free, pending and cached frames hold no references and no type.
 * The states add up to the host's total.
 *
 * Ownership part: I2 (a domain's page count is the frames it owns, within its maximum),
 * I3 (every count equals a full recount of its holders: the allocation reference here,
 * each module's structures through its recount hook), I4 (one type while counted; table
 * states only on tables) and I16 (no frame outlives its domain).
 *
 * The audit needs a quiesced host; it only reads.
 */
#include "mm-internal.h"

void mv__audit_report(struct mv_audit_ctx *ac, const char *inv, const char *what, mv_mfn_t mfn,
                      uint32_t domid, uint64_t expected, uint64_t found)
{
    if (ac->rep && ac->nr < MV_AUDIT_MAX_RECORDED) {
        struct mv_audit_violation *v = &ac->rep->v[ac->nr];
        v->invariant = inv;
        v->what = what;
        v->mfn = mfn;
        v->domid = domid;
        v->detail[0] = expected;
        v->detail[1] = found;
    }
    ac->nr++;
}

/* Visit marks: which structure reached a frame. */
enum { SEEN_NONE = 0, SEEN_FREE = 1, SEEN_PENDING = 2, SEEN_CACHED = 3 };

struct node_walk {
    struct mv_heap_node *n;
    uint8_t *seen;
};

#define BAD(ac, what, mfn, exp, found) mv__audit_report(ac, "I1", what, mfn, UINT32_MAX, exp, found)

static bool mark(struct mv_audit_ctx *ac, struct node_walk *w, uint64_t idx, uint8_t how)
{
    if (w->seen[idx] != SEEN_NONE) {
        BAD(ac, "frame-on-two-lists", w->n->first_mfn + idx, w->seen[idx], how);
        return false;
    }
    w->seen[idx] = how;
    return true;
}

static void walk_free_lists(struct mv_audit_ctx *ac, struct node_walk *w)
{
    struct mv_heap_node *n = w->n;
    uint64_t frames = 0, dirty = 0;
    for (unsigned o = 0; o <= MV_MAX_ORDER; o++) {
        uint64_t blocks = 0;
        uint32_t prev = MV_IDX_NIL;
        for (uint32_t idx = n->free_head[o]; idx != MV_IDX_NIL;) {
            mv_mfn_t mfn = n->first_mfn + idx;
            struct mv_frame *f = &n->ft[idx];
            uint64_t link = atomic_load_explicit(&f->link, memory_order_relaxed);
            uint32_t fl = atomic_load_explicit(&f->flags, memory_order_relaxed);
            if (idx >= n->nr_frames || idx + (1ull << o) > n->nr_frames) {
                BAD(ac, "free-block-outside-node", mfn, n->nr_frames, idx);
                break;
            }
            if (w->seen[idx] == SEEN_FREE) {
                BAD(ac, "free-list-cycle", mfn, o, 0);
                break;
            }
            if ((uint32_t)link != prev)
                BAD(ac, "free-list-prev-broken", mfn, prev, (uint32_t)link);
            if (mfn & ((1ull << o) - 1))
                BAD(ac, "free-block-misaligned", mfn, o, mfn);
            if (!(fl & MV_PGF_HEAD) || mv__pgf_order(fl) != o)
                BAD(ac, "free-block-head-order", mfn, o, fl);
            for (uint64_t i = 0; i < (1ull << o); i++) {
                struct mv_frame *t = &n->ft[idx + i];
                if (!mark(ac, w, idx + i, SEEN_FREE))
                    continue;
                if (mv__frame_owner(t) != MV_OWNER_FREE)
                    BAD(ac, "free-frame-owned", mfn + i, MV_OWNER_FREE, mv__frame_owner(t));
                if (atomic_load_explicit(&t->count, memory_order_relaxed))
                    BAD(ac, "free-frame-referenced", mfn + i, 0,
                        atomic_load_explicit(&t->count, memory_order_relaxed));
                if (i && (atomic_load_explicit(&t->flags, memory_order_relaxed) & MV_PGF_HEAD))
                    BAD(ac, "free-block-inner-head", mfn + i, 0, 1);
            }
            frames += 1ull << o;
            if (!(fl & MV_PGF_ZERO))
                dirty += 1ull << o;
            blocks++;
            prev = idx;
            idx = (uint32_t)(link >> 32);
        }
        if (blocks != n->free_blocks[o])
            BAD(ac, "heap-order-count", n->first_mfn, n->free_blocks[o], blocks);
    }
    if (frames != n->free_frames)
        BAD(ac, "heap-free-count", n->first_mfn, n->free_frames, frames);
    if (dirty != n->free_dirty)
        BAD(ac, "heap-dirty-count", n->first_mfn, n->free_dirty, dirty);
}

static void walk_pending(struct mv_audit_ctx *ac, struct node_walk *w)
{
    struct mv_heap_node *n = w->n;
    uint64_t frames = 0;
    if (n->decommitting)
        BAD(ac, "decommit-in-flight", n->first_mfn, 0, n->decommitting);
    for (uint32_t idx = n->pending_head; idx != MV_IDX_NIL;) {
        struct mv_frame *f = &n->ft[idx];
        uint32_t fl = atomic_load_explicit(&f->flags, memory_order_relaxed);
        unsigned o = mv__pgf_order(fl);
        if (idx + (1ull << o) > n->nr_frames || w->seen[idx] == SEEN_PENDING) {
            BAD(ac, "pending-list-broken", n->first_mfn + idx, 0, idx);
            break;
        }
        for (uint64_t i = 0; i < (1ull << o); i++) {
            if (!mark(ac, w, idx + i, SEEN_PENDING))
                continue;
            if (mv__frame_owner(&n->ft[idx + i]) != MV_OWNER_PENDING)
                BAD(ac, "pending-frame-owned", n->first_mfn + idx + i, MV_OWNER_PENDING,
                    mv__frame_owner(&n->ft[idx + i]));
        }
        frames += 1ull << o;
        idx = (uint32_t)(atomic_load_explicit(&f->link, memory_order_relaxed) >> 32);
    }
    if (frames != n->pending_frames)
        BAD(ac, "pending-count", n->first_mfn, n->pending_frames, frames);
}

static void walk_caches(struct mv_audit_ctx *ac, mv_host_t *h, struct node_walk *w)
{
    struct mv_heap_node *n = w->n;
    for (uint32_t s = 0; s < h->max_slots; s++) {
        struct mv_slot_cache *c = mv__slot_cache(h, s, n->id);
        uint32_t cnt = atomic_load_explicit(&c->n, memory_order_relaxed);
        if (cnt > h->cache_max) {
            BAD(ac, "slot-cache-overfull", MV_INVALID_MFN, h->cache_max, cnt);
            continue;
        }
        for (uint32_t i = 0; i < cnt; i++) {
            mv_mfn_t mfn = c->mfn[i];
            if (mfn - n->first_mfn >= n->nr_frames) {
                BAD(ac, "slot-cache-foreign-frame", mfn, n->id, s);
                continue;
            }
            if (!mark(ac, w, mfn - n->first_mfn, SEEN_CACHED))
                continue;
            if (mv__frame_owner(&n->ft[mfn - n->first_mfn]) != MV_OWNER_CACHED)
                BAD(ac, "cached-frame-owned", mfn, MV_OWNER_CACHED,
                    mv__frame_owner(&n->ft[mfn - n->first_mfn]));
        }
    }
}

static bool owner_known(uint32_t owner)
{
    return owner < MV_OWNER_FIRST_SPECIAL ||
           (owner >= MV_OWNER_FREE && owner <= MV_OWNER_TOPUP);
}

/* Every frame against what the walks found; held frames in well-formed blocks. */
static void check_frames(struct mv_audit_ctx *ac, struct node_walk *w, uint64_t *held)
{
    struct mv_heap_node *n = w->n;
    uint64_t block_left = 0;
    uint32_t block_owner = 0;
    for (uint64_t i = 0; i < n->nr_frames; i++) {
        struct mv_frame *f = &n->ft[i];
        mv_mfn_t mfn = n->first_mfn + i;
        uint32_t owner = mv__frame_owner(f);
        uint32_t fl = atomic_load_explicit(&f->flags, memory_order_relaxed);
        uint8_t expect = owner == MV_OWNER_FREE      ? SEEN_FREE
                         : owner == MV_OWNER_PENDING ? SEEN_PENDING
                         : owner == MV_OWNER_CACHED  ? SEEN_CACHED
                                                     : SEEN_NONE;
        if (!owner_known(owner))
            BAD(ac, "frame-owner-unknown", mfn, 0, owner);
        if (w->seen[i] != expect)
            BAD(ac, expect == SEEN_NONE ? "held-frame-on-list" : "idle-frame-lost", mfn,
                expect, w->seen[i]);
        if (expect != SEEN_NONE) {
            if (atomic_load_explicit(&f->count, memory_order_relaxed) ||
                atomic_load_explicit(&f->type_info, memory_order_relaxed))
                BAD(ac, "idle-frame-referenced", mfn, 0,
                    atomic_load_explicit(&f->count, memory_order_relaxed));
            if (block_left)
                BAD(ac, "held-block-truncated", mfn, block_left, 0);
            block_left = 0;
            continue;
        }
        (*held)++;
        if (fl & MV_PGF_HEAD) {
            if (block_left)
                BAD(ac, "held-block-truncated", mfn, block_left, 0);
            unsigned o = mv__pgf_order(fl);
            if (mfn & ((1ull << o) - 1))
                BAD(ac, "held-block-misaligned", mfn, o, mfn);
            block_left = (1ull << o) - 1;
            block_owner = owner;
        } else if (!block_left) {
            BAD(ac, "held-frame-without-head", mfn, 0, owner);
        } else {
            block_left--;
            if (owner != block_owner)
                BAD(ac, "held-block-mixed-owner", mfn, block_owner, owner);
        }
    }
    if (block_left)
        BAD(ac, "held-block-truncated", n->first_mfn + n->nr_frames, block_left, 0);
}

int mv__audit_machine(mv_host_t *h, struct mv_audit_ctx *ac, uint64_t *checked)
{
    uint64_t states = 0;
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct node_walk w = {.n = h->node[i]};
        size_t bytes = (size_t)w.n->nr_frames;
        w.seen = mv__meta_alloc(h, bytes);
        if (!w.seen)
            return MV_ENOMEM;
        uint64_t held = 0;
        mv_spin_lock(&w.n->lock);
        walk_free_lists(ac, &w);
        walk_pending(ac, &w);
        mv_spin_unlock(&w.n->lock);
        walk_caches(ac, h, &w);
        check_frames(ac, &w, &held);
        uint64_t cached = mv__heap_cached(h, i);
        states += w.n->free_frames + w.n->pending_frames + cached + held;
        *checked += w.n->nr_frames;
        mv__meta_free(h, w.seen, bytes);
    }
    if (states != h->total_frames)
        BAD(ac, "states-do-not-add-up", MV_INVALID_MFN, h->total_frames, states);
    return 0;
}

/* ---- Ownership: I2, I3, I4, I16 ------------------------------------------------------- */

uint64_t mv__audit_frame_index(const mv_host_t *h, mv_mfn_t mfn)
{
    uint64_t base = 0;
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        const struct mv_heap_node *n = h->node[i];
        if (mfn - n->first_mfn < n->nr_frames)
            return base + (mfn - n->first_mfn);
        base += n->nr_frames;
    }
    return UINT64_MAX;
}

#define BADD(ac, inv, what, mfn, dom, exp, found) \
    mv__audit_report(ac, inv, what, mfn, dom, exp, found)

/* Types: one type while counted, table states only on tables, pins only on used tables. */
static void check_type(struct mv_audit_ctx *ac, mv_mfn_t mfn, uint32_t owner, uint64_t t)
{
    unsigned type = mv__pgt_type(t);
    uint64_t cnt = t & MV_PGT_COUNT_MASK;
    if (type > MV_PGT_SHARED)
        BADD(ac, "I4", "type-unknown", mfn, owner, MV_PGT_SHARED, type);
    if (cnt && type == MV_PGT_NONE)
        BADD(ac, "I4", "type-count-without-type", mfn, owner, 0, cnt);
    if (mv__pgt_is_table(type) && !cnt && (t & MV_PGT_VALIDATED))
        BADD(ac, "I4", "unused-table-validated", mfn, owner, 0, t);
    if ((t & MV_PGT_PINNED) && (!mv__pgt_is_table(type) || !cnt))
        BADD(ac, "I4", "pin-without-table-type", mfn, owner, 1, cnt);
    if ((t & MV_PGT_PARTIAL) && !mv__pgt_is_table(type))
        BADD(ac, "I4", "partial-not-table", mfn, owner, 0, type);
    if (mv__pgt_is_table(type) && cnt && owner > MV_DOMID_MAX)
        BADD(ac, "I4", "table-not-domain-owned", mfn, owner, 0, owner);
}

static int audit_ownership(mv_host_t *h, struct mv_audit_ctx *ac)
{
    size_t bytes = (size_t)h->total_frames * sizeof(uint32_t);
    uint64_t *owned = mv__meta_alloc(h, (MV_DOMID_MAX + 1) * sizeof(uint64_t));
    ac->refs = mv__meta_alloc(h, bytes);
    ac->types = mv__meta_alloc(h, bytes);
    if (!owned || !ac->refs || !ac->types) {
        mv__meta_free(h, owned, (MV_DOMID_MAX + 1) * sizeof(uint64_t));
        mv__meta_free(h, ac->refs, bytes);
        mv__meta_free(h, ac->types, bytes);
        ac->refs = ac->types = NULL;
        return MV_ENOMEM;
    }
    /* The recount: allocation references here, each module's holders through its hook. */
    uint64_t idx = 0;
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        for (uint64_t j = 0; j < n->nr_frames; j++, idx++) {
            struct mv_frame *f = &n->ft[j];
            uint32_t owner = mv__frame_owner(f);
            if (owner <= MV_DOMID_MAX) {
                owned[owner]++;
                if (atomic_load_explicit(&f->flags, memory_order_relaxed) & MV_PGF_ALLOCATED)
                    ac->refs[idx]++;
            }
        }
    }
    for (unsigned m = 0; m < MV_MOD_NR; m++)
        if (h->modules[m] && h->modules[m]->recount)
            h->modules[m]->recount(h, ac);

    /* I3 and I4, frame by frame, against the recount. */
    idx = 0;
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        for (uint64_t j = 0; j < n->nr_frames; j++, idx++) {
            struct mv_frame *f = &n->ft[j];
            mv_mfn_t mfn = n->first_mfn + j;
            uint32_t owner = mv__frame_owner(f);
            uint32_t count = atomic_load_explicit(&f->count, memory_order_relaxed);
            uint64_t t = atomic_load_explicit(&f->type_info, memory_order_relaxed);
            uint32_t dom = owner <= MV_DOMID_MAX ? owner : UINT32_MAX;
            if (count != ac->refs[idx])
                BADD(ac, "I3", "refcount-mismatch", mfn, dom, ac->refs[idx], count);
            if (count > MV_REF_MAX)
                BADD(ac, "I3", "refcount-overflow", mfn, dom, MV_REF_MAX, count);
            if ((t & MV_PGT_COUNT_MASK) != ac->types[idx])
                BADD(ac, "I4", "typecount-mismatch", mfn, dom, ac->types[idx],
                     t & MV_PGT_COUNT_MASK);
            if ((t & MV_PGT_COUNT_MASK) > count)
                BADD(ac, "I4", "typed-without-reference", mfn, dom, t & MV_PGT_COUNT_MASK, count);
            check_type(ac, mfn, owner, t);
            if (owner <= MV_DOMID_MAX && count == 0)
                BADD(ac, "I3", "owned-frame-unreferenced", mfn, dom, 1, 0);
        }
    }

    /* I2 and I16, domain by domain. */
    for (uint32_t id = 0; id <= MV_DOMID_MAX; id++) {
        mv_domain_t *d = mv__domain_of_owner(h, id);
        if (!d) {
            if (owned[id])
                BADD(ac, "I16", "frames-of-vanished-domain", MV_INVALID_MFN, id, 0, owned[id]);
            continue;
        }
        uint64_t pages = atomic_load_explicit(&d->pages, memory_order_relaxed);
        uint64_t max = atomic_load_explicit(&d->max_pages, memory_order_relaxed);
        if (pages != owned[id])
            BADD(ac, "I2", "domain-page-count", MV_INVALID_MFN, id, owned[id], pages);
        if (pages > max)
            BADD(ac, "I2", "domain-above-maximum", MV_INVALID_MFN, id, max, pages);
        if (d->phase == MV_TD_DONE)
            BADD(ac, "I16", "destroyed-domain-in-table", MV_INVALID_MFN, id, 0, 1);
    }
    for (unsigned m = 0; m < MV_MOD_NR; m++)
        if (h->modules[m] && h->modules[m]->audit)
            h->modules[m]->audit(h, ac);

    mv__meta_free(h, owned, (MV_DOMID_MAX + 1) * sizeof(uint64_t));
    mv__meta_free(h, ac->refs, bytes);
    mv__meta_free(h, ac->types, bytes);
    ac->refs = ac->types = NULL;
    return 0;
}

MV_API int mv_host_audit(mv_host_t *h, struct mv_audit_report *rep)
{
    if (!h)
        return MV_EINVAL;
    if (rep) {
        int rc = mv__prepare_out(rep, sizeof(*rep));
        if (rc)
            return rc;
    }
    struct mv_audit_ctx ac = {.rep = rep};
    uint64_t checked = 0;
    int rc = mv__audit_machine(h, &ac, &checked);
    if (!rc)
        rc = audit_ownership(h, &ac);
    if (rc)
        return rc;
    if (rep) {
        rep->checked_frames = checked;
        rep->nr_violations = ac.nr;
    }
    return ac.nr ? MV_EUCLEAN : 0;
}

/*
 * shadow/pool.c - the shadow pool: slots (a frame and its nodes), the hash from
 * (gfn, type) to shadow, the rmap and parent lists, entry updates, unshadowing and
 * eviction, the per-vCPU topup caches.
 *
 * A slot is EMPTY (nothing allocated), FREE (frame and nodes ready, zeroed, on the free
 * list), TOPUP (reserved by one vCPU for its next locked section) or USED (a live shadow,
 * in the hash and on the LRU list). There are `cap` slots, one per frame the pool may ever
 * hold (its ceiling); at most `budget` of them hold frames. Frames of FREE and TOPUP slots
 * belong to MV_OWNER_TOPUP, of USED slots to MV_OWNER_INTERNAL.
 *
 * Topup runs with no lock held except for short sections that move slots between lists or
 * evict: when the budget is reached and no slot is free, the least recently used shadow
 * that no vCPU holds as a root is dropped, every entry that pointed at it is cleared and
 * all vCPUs of the domain flush before its frame is used again (I13). A root is never
 * evicted (XSA-438).
 *
 * The pool sizes itself (Xen fixes it at domain build and crashes the domain when it is too
 * small). It grows when shadows it evicted keep being built again: every SH_GROW_WINDOW
 * creates, if one in sixteen rebuilt a shadow evicted lately (a small filter of evicted
 * (gfn, type) keys tells), the budget rises by half, up to the ceiling. It shrinks
 * when the guest needs less: every SH_SHRINK_WINDOW faults, if the most shadows live in
 * that window stayed under half the budget, the budget falls to one and a half times that
 * (never under the floor) and free frames go back to the heap at the next topup, or at
 * once through mv_shadow_trim. With no ceiling configured the budget also follows the
 * guest's size (size_limit): it grows no further than a 64th of what the guest owns now
 * plus 256, and falls to that at the next shrink decision when the guest was ballooned down.
 */
#include "shadow-internal.h"

static inline uint32_t ref_page(uint32_t r) { return r >> 9; }
static inline unsigned ref_idx(uint32_t r) { return r & 511u; }
static inline uint32_t mkref(uint32_t pi, unsigned idx) { return pi << 9 | idx; }

/* By gfn alone: every shadow of one guest frame (L1..L4, a splinter keyed there) sits on
 * one chain, so one pass finds them all. */
static inline uint32_t hash_of(const struct sh_domain *s, mv_gfn_t gfn)
{
    uint64_t x = gfn * 0x9e3779b97f4a7c15ull;
    return (uint32_t)(x >> 40) & (s->nbuckets - 1);
}

static inline struct sh_node *node_of(struct sh_domain *s, uint32_t r)
{
    return &s->pages[ref_page(r)].nodes[ref_idx(r)];
}

uint32_t mv__sh_lookup(struct sh_domain *s, mv_gfn_t gfn, unsigned type)
{
    for (uint32_t i = s->hash[hash_of(s, gfn)]; i != SH_NIL; i = s->pages[i].hnext)
        if (s->pages[i].gfn == gfn && s->pages[i].type == type)
            return i;
    return SH_NIL;
}

bool mv__sh_tables_of(struct sh_domain *s, mv_gfn_t gfn, uint32_t tab[SH_NR_TYPES])
{
    for (unsigned t = 0; t < SH_NR_TYPES; t++)
        tab[t] = SH_NIL;
    if (!s->tables_in[gfn & (SH_RMAP_BUCKETS - 1)])
        return false;
    bool any = false;
    for (uint32_t i = s->hash[hash_of(s, gfn)]; i != SH_NIL; i = s->pages[i].hnext)
        if (s->pages[i].gfn == gfn && sh_type_is_table(s->pages[i].type)) {
            tab[s->pages[i].type] = i;
            any = true;
        }
    return any;
}

/* ---- LRU ------------------------------------------------------------------------------ */

static void lru_remove(struct sh_domain *s, uint32_t pi)
{
    struct sh_page *sp = &s->pages[pi];
    if (sp->lru_prev != SH_NIL)
        s->pages[sp->lru_prev].lru_next = sp->lru_next;
    else
        s->lru_head = sp->lru_next;
    if (sp->lru_next != SH_NIL)
        s->pages[sp->lru_next].lru_prev = sp->lru_prev;
    else
        s->lru_tail = sp->lru_prev;
    sp->lru_prev = sp->lru_next = SH_NIL;
}

static void lru_push(struct sh_domain *s, uint32_t pi)
{
    struct sh_page *sp = &s->pages[pi];
    sp->lru_prev = SH_NIL;
    sp->lru_next = s->lru_head;
    if (s->lru_head != SH_NIL)
        s->pages[s->lru_head].lru_prev = pi;
    else
        s->lru_tail = pi;
    s->lru_head = pi;
}

/*
 * A use moves the shadow to the head - unless it moved there within the last
 * in_use / 16 locked sections (at least the current one): a section moves a handful of
 * shadows, so it is still among the most recent sixteenth or so, and the tables every
 * fault goes through (a guest's L4, L3, L2) do not move three times per fault. Below 32
 * shadows the order is exact.
 */
void mv__sh_touch(struct sh_domain *s, uint32_t pi)
{
    struct sh_page *sp = &s->pages[pi];
    uint64_t window = s->in_use / 16 ? s->in_use / 16 : 1;
    if (s->lru_head == pi || s->section - sp->touched < window)
        return;
    sp->touched = s->section;
    lru_remove(s, pi);
    lru_push(s, pi);
}

/* ---- Chains ---------------------------------------------------------------------------- */

static uint32_t *chain_head(struct sh_domain *s, uint32_t r)
{
    struct sh_page *sp = &s->pages[ref_page(r)];
    struct sh_node *n = &sp->nodes[ref_idx(r)];
    if (sh_type_leafy(sp->type))
        return &s->rmap[n->key & (SH_RMAP_BUCKETS - 1)];
    return &s->pages[n->key].up;
}

static void chain_link(struct sh_domain *s, uint32_t r)
{
    uint32_t *head = chain_head(s, r);
    struct sh_node *n = node_of(s, r);
    n->prev = SH_NIL;
    n->next = *head;
    if (*head != SH_NIL)
        node_of(s, *head)->prev = r;
    *head = r;
}

static void chain_unlink(struct sh_domain *s, uint32_t r)
{
    struct sh_node *n = node_of(s, r);
    if (n->prev != SH_NIL)
        node_of(s, n->prev)->next = n->next;
    else
        *chain_head(s, r) = n->next;
    if (n->next != SH_NIL)
        node_of(s, n->next)->prev = n->prev;
    n->next = n->prev = SH_NIL;
}

void mv__sh_set(struct sh_domain *s, uint32_t pi, unsigned idx, uint64_t val, uint64_t key)
{
    mv__assert_held(&s->lock);
    struct sh_page *sp = &s->pages[pi];
    uint64_t *t = sh_table(s, sp);
    uint64_t old = t[idx];
    uint32_t r = mkref(pi, idx);
    if ((old & X86E_P) && (val & X86E_P) && sp->nodes[idx].key == key) {
        sh_store(&t[idx], val); /* same target: rights change only */
        return;
    }
    if (old & X86E_P)
        chain_unlink(s, r);
    sh_store(&t[idx], val);
    if (val & X86E_P) {
        sp->nodes[idx].key = key;
        chain_link(s, r);
    }
}

/* ---- Creating and dropping shadows --------------------------------------------------------- */

/*
 * How far the budget may go now: the ceiling, or - when none was configured - a 64th of
 * what the guest owns now plus 256, within [floor, ceiling] (the ceiling itself came from
 * the guest's max_pages at creation): a pool follows its guest as it is populated and
 * ballooned up and down.
 */
static uint32_t size_limit(const struct sh_domain *s)
{
    if (!s->follows_size)
        return s->ceiling;
    uint64_t lim = sh_pool_for(atomic_load_explicit(&s->d->pages, memory_order_relaxed));
    return lim < s->floor ? s->floor : lim > s->ceiling ? s->ceiling : (uint32_t)lim;
}

/* The evicted filter's slot for (gfn, type), and the key kept there (never 0): a
 * multiplicative hash, its top bits for the slot (the best mixed), the next ones as key. */
static uint32_t *evicted_slot(struct sh_domain *s, mv_gfn_t gfn, unsigned type, uint32_t *key)
{
    uint64_t x = (gfn * 8 + type) * 0x9e3779b97f4a7c15ull;
    *key = (uint32_t)(x >> 16) | 1u;
    return &s->evicted[(x >> 54) & (SH_EVICTED_FILTER - 1)];
}

uint32_t mv__sh_create(struct sh_domain *s, struct sh_vcpu *sv, mv_gfn_t gfn, unsigned type,
                       mv_mfn_t gmfn)
{
    mv__assert_held(&s->lock);
    MV_ASSERT(sv->ntop > 0);
    /* A frame shadowed at another level is in sync first (never out of sync then). */
    if (sh_type_is_table(type) && type != SH_L1) {
        uint32_t l1 = mv__sh_lookup(s, gfn, SH_L1);
        if (l1 != SH_NIL && s->pages[l1].oos)
            mv__sh_resync_one(s, l1, mv__sh_nxe(sv->v), mv__sh_gb(sv->v), true);
    }
    uint32_t pi = sv->top[--sv->ntop];
    struct sh_page *sp = &s->pages[pi];
    MV_ASSERT(sp->state == SLOT_TOPUP);
    sp->state = SLOT_USED;
    sp->type = (uint8_t)type;
    sp->gfn = gfn;
    sp->gmfn = gmfn;
    sp->pins = 0;
    sp->oos = 0;
    sp->dead_root = false;
    sp->writes = sp->idle_writes = 0;
    sp->touched = s->section; /* pushed at the head below */
    sp->up = SH_NIL;
    atomic_store_explicit(&mv__frame(s->d->h, sp->smfn)->owner, MV_OWNER_INTERNAL,
                          memory_order_release);
    uint32_t b = hash_of(s, gfn);
    sp->hnext = s->hash[b];
    s->hash[b] = pi;
    lru_push(s, pi);
    s->by_type[type]++;
    if (sh_type_is_table(type))
        s->tables_in[gfn & (SH_RMAP_BUCKETS - 1)]++;
    s->any_used = true;
    if (++s->in_use > s->win_max_used)
        s->win_max_used = s->in_use;
    /* Growth: was this shadow evicted lately? */
    uint32_t key;
    uint32_t *slot = evicted_slot(s, gfn, type, &key);
    if (*slot == key) {
        *slot = 0;
        s->win_rebuilds++;
        s->rebuilds++;
    }
    if (++s->win_creates == SH_GROW_WINDOW) {
        uint32_t lim = size_limit(s);
        if (s->win_rebuilds * 16 >= s->win_creates && s->budget < lim) {
            uint32_t step = s->budget / 2 > 32 ? s->budget / 2 : 32;
            s->budget = lim - s->budget > step ? s->budget + step : lim;
            s->grows++;
        }
        s->win_creates = s->win_rebuilds = 0;
    }
    if (sh_type_is_table(type) && mv__sh_write_protect(s, gfn))
        mv__sh_flush_all(s);
    return pi;
}

void mv__sh_unshadow(struct sh_domain *s, uint32_t pi)
{
    mv__assert_held(&s->lock);
    struct sh_page *sp = &s->pages[pi];
    MV_ASSERT(sp->state == SLOT_USED);
    mv__sh_oos_forget(s, pi);
    /* Every entry that points here, then every entry of ours. */
    while (sp->up != SH_NIL) {
        uint32_t r = sp->up;
        mv__sh_set(s, ref_page(r), ref_idx(r), 0, 0);
    }
    uint64_t *t = sh_table(s, sp);
    for (unsigned i = 0; i < SH_ENTRIES; i++)
        if (t[i])
            mv__sh_set(s, pi, i, 0, 0);
    uint32_t *pp = &s->hash[hash_of(s, sp->gfn)];
    while (*pp != pi)
        pp = &s->pages[*pp].hnext;
    *pp = sp->hnext;
    lru_remove(s, pi);
    s->by_type[sp->type]--;
    if (sh_type_is_table(sp->type))
        s->tables_in[sp->gfn & (SH_RMAP_BUCKETS - 1)]--;
    s->in_use--;
    sp->type = SH_NONE;
    sp->state = SLOT_FREE;
    sp->fnext = s->free_head;
    s->free_head = pi;
    atomic_store_explicit(&mv__frame(s->d->h, sp->smfn)->owner, MV_OWNER_TOPUP,
                          memory_order_release);
}

void mv__sh_flush_all(struct sh_domain *s)
{
    mv_domain_t *d = s->d;
    struct mv_flush_request req = {.domid = (mv_domid_t)d->domid, .scope = MV_FLUSH_LINEAR_ALL,
                                   .nr_vcpus = d->nr_vcpus};
    for (uint32_t i = 0; i < d->nr_vcpus; i++)
        req.vcpu_mask[i / 64] |= 1ull << (i % 64);
    mv__flush(d->h, &req);
}

/* Drop the least recently used shadow no vCPU holds; false when none can go. */
static bool evict_one(struct sh_domain *s)
{
    for (uint32_t pi = s->lru_tail; pi != SH_NIL; pi = s->pages[pi].lru_prev) {
        if (s->pages[pi].pins)
            continue;
        struct sh_page *sp = &s->pages[pi];
        uint32_t key;
        *evicted_slot(s, sp->gfn, sp->type, &key) = key;
        mv__sh_unshadow(s, pi);
        s->evictions++;
        mv__sh_flush_all(s); /* before the frame serves again (I13) */
        return true;
    }
    return false;
}

/* ---- Leaves: zapping and write protection ----------------------------------------------- */

uint64_t mv__sh_zap_gfns(struct sh_domain *s, mv_gfn_t first, uint64_t n)
{
    mv__assert_held(&s->lock);
    uint64_t zapped = 0;
    bool scan_all = n >= SH_RMAP_BUCKETS;
    for (uint64_t b = 0; b < (scan_all ? SH_RMAP_BUCKETS : n); b++) {
        uint32_t bucket = scan_all ? (uint32_t)b : (uint32_t)((first + b) & (SH_RMAP_BUCKETS - 1));
        for (uint32_t r = s->rmap[bucket]; r != SH_NIL;) {
            struct sh_node *nd = node_of(s, r);
            uint32_t next = nd->next;
            if (nd->key - first < n) {
                mv__sh_set(s, ref_page(r), ref_idx(r), 0, 0);
                zapped++;
            }
            r = next;
        }
    }
    s->zapped += zapped;
    return zapped;
}

bool mv__sh_write_protect(struct sh_domain *s, mv_gfn_t gfn)
{
    bool any = false;
    for (uint32_t r = s->rmap[gfn & (SH_RMAP_BUCKETS - 1)]; r != SH_NIL; r = node_of(s, r)->next) {
        if (node_of(s, r)->key != gfn)
            continue;
        uint64_t *slot = sh_table(s, &s->pages[ref_page(r)]) + ref_idx(r);
        uint64_t e = sh_read(slot);
        if (e & X86E_RW) {
            sh_store(slot, e & ~(X86E_RW | X86E_D));
            any = true;
        }
    }
    return any;
}

/* ---- Topup ------------------------------------------------------------------------------ */

static int materialize(struct sh_domain *s, uint32_t pi)
{
    mv_domain_t *d = s->d;
    struct sh_page *sp = &s->pages[pi];
    size_t nb = SH_ENTRIES * sizeof(struct sh_node);
    struct sh_node *nodes = mv__meta_alloc(d->h, nb);
    if (!nodes)
        return MV_ENOMEM;
    mv_mfn_t m;
    int rc = mv__heap_alloc(d->h, 0, d->node_affinity, MV_ALLOC_ZERO, MV_OWNER_TOPUP, &m);
    if (rc) {
        mv__meta_free(d->h, nodes, nb);
        return rc;
    }
    for (unsigned i = 0; i < SH_ENTRIES; i++)
        nodes[i] = (struct sh_node){0, SH_NIL, SH_NIL};
    sp->nodes = nodes;
    sp->smfn = m;
    atomic_fetch_add_explicit(&d->overhead_pages, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->overhead_bytes, nb, memory_order_relaxed);
    return 0;
}

int mv__sh_topup(mv_vcpu_t *v)
{
    struct sh_domain *s = sh_of(v->d);
    struct sh_vcpu *sv = shv_of(v);
    if (s->trim_pending)
        mv__sh_pool_trim(s, false);
    for (int round = 0; sv->ntop < SH_TOPUP; round++) {
        uint32_t fresh[SH_TOPUP];
        unsigned nfresh = 0;
        mv_spin_lock(&s->lock);
        while (sv->ntop + nfresh < SH_TOPUP) {
            uint32_t pi;
            if (s->free_head != SH_NIL) {
                pi = s->free_head;
                s->free_head = s->pages[pi].fnext;
                s->pages[pi].state = SLOT_TOPUP;
                sv->top[sv->ntop++] = pi;
            } else if (s->empty_head != SH_NIL &&
                       s->pool_frames + s->materializing < s->budget) {
                pi = s->empty_head;
                s->empty_head = s->pages[pi].fnext;
                s->pages[pi].state = SLOT_TOPUP;
                s->materializing++;
                fresh[nfresh++] = pi;
            } else if (!evict_one(s)) {
                break;
            }
        }
        mv_spin_unlock(&s->lock);
        int rc = 0;
        unsigned ok = 0;
        for (; ok < nfresh && !(rc = materialize(s, fresh[ok])); ok++)
            ;
        mv_spin_lock(&s->lock);
        s->materializing -= nfresh;
        for (unsigned i = 0; i < nfresh; i++) {
            if (i < ok) {
                s->pool_frames++;
                sv->top[sv->ntop++] = fresh[i];
            } else {
                s->pages[fresh[i]].state = SLOT_EMPTY;
                s->pages[fresh[i]].fnext = s->empty_head;
                s->empty_head = fresh[i];
            }
        }
        /* The heap is short: the pool stops growing and evicts instead (never fails the
         * guest while it has shadows to give up). */
        if (rc == MV_ENOMEM && s->budget > s->pool_frames + s->materializing)
            s->budget = (uint32_t)(s->pool_frames + s->materializing) > s->floor
                            ? (uint32_t)(s->pool_frames + s->materializing) : s->floor;
        mv_spin_unlock(&s->lock);
        if (rc && rc != MV_ENOMEM)
            return rc;
        if (sv->ntop < SH_TOPUP && !nfresh)
            return MV_ENOMEM; /* every slot is a root or in another vCPU's cache */
        if (round > 4)
            return MV_ENOMEM;
    }
    return 0;
}

void mv__sh_pool_tick(struct sh_domain *s)
{
    mv__assert_held(&s->lock);
    if (++s->win_faults < SH_SHRINK_WINDOW)
        return;
    /* What the window needed, with room for every vCPU's topup cache. */
    uint64_t need = s->win_max_used + s->win_max_used / 2 + (uint64_t)SH_TOPUP * s->d->nr_vcpus;
    if (need < s->floor)
        need = s->floor;
    uint32_t lim = size_limit(s);
    if (need > lim)
        need = lim; /* the guest shrank: so does the pool, evicting if it must */
    if ((s->win_max_used * 2 < s->budget || s->budget > lim) && need < s->budget) {
        s->budget = (uint32_t)need;
        s->shrinks++;
        s->trim_pending = true;
    }
    s->win_faults = 0;
    s->win_max_used = s->in_use;
}

/* Free pool frames beyond the budget back to the heap, a batch per locked section. */
void mv__sh_pool_trim(struct sh_domain *s, bool now)
{
    mv_domain_t *d = s->d;
    size_t nb = SH_ENTRIES * sizeof(struct sh_node);
    for (;;) {
        mv_mfn_t frames[32];
        struct sh_node *nodes[32];
        unsigned n = 0;
        mv_spin_lock(&s->lock);
        if (now) {
            uint64_t need = s->in_use + s->in_use / 2 + (uint64_t)SH_TOPUP * d->nr_vcpus;
            need = need < s->floor ? s->floor : need;
            if (need < s->budget) {
                s->budget = (uint32_t)need;
                s->shrinks++;
            }
            now = false;
        }
        /* Free frames first; past them (a budget the guest's size lowered under what is
         * live), the least recently used shadows are evicted. */
        while (n < 32 && s->pool_frames > s->budget &&
               (s->free_head != SH_NIL || evict_one(s))) {
            uint32_t pi = s->free_head;
            struct sh_page *sp = &s->pages[pi];
            s->free_head = sp->fnext;
            frames[n] = sp->smfn;
            nodes[n++] = sp->nodes;
            sp->smfn = MV_INVALID_MFN;
            sp->nodes = NULL;
            sp->state = SLOT_EMPTY;
            sp->fnext = s->empty_head;
            s->empty_head = pi;
            s->pool_frames--;
        }
        if (!n)
            s->trim_pending = false;
        mv_spin_unlock(&s->lock);
        if (!n)
            return;
        for (unsigned k = 0; k < n; k++) {
            /* A free pool frame is zero and no table points at it (I13): back to the heap. */
            atomic_store_explicit(&mv__frame(d->h, frames[k])->owner, MV_OWNER_PENDING,
                                  memory_order_release);
            mv__heap_free(d->h, frames[k], 0);
            mv__meta_free(d->h, nodes[k], nb);
            atomic_fetch_sub_explicit(&d->overhead_pages, 1, memory_order_relaxed);
            atomic_fetch_sub_explicit(&d->overhead_bytes, nb, memory_order_relaxed);
        }
    }
}

/* Teardown (no concurrency): every shadow dropped, every slot's frame and nodes returned. */
void mv__sh_free_all(struct sh_domain *s)
{
    mv_domain_t *d = s->d;
    mv_spin_lock(&s->lock);
    for (uint32_t i = 0; i < d->nr_vcpus; i++) {
        struct sh_vcpu *sv = shv_of(d->vcpu[i]);
        if (!sv)
            continue;
        for (unsigned k = 0; k < SH_ROOTS; k++)
            if (sv->roots[k] != SH_NIL) {
                s->pages[sv->roots[k]].pins--;
                sv->roots[k] = SH_NIL;
            }
        sv->cur = SH_NIL;
        while (sv->ntop) {
            uint32_t pi = sv->top[--sv->ntop];
            s->pages[pi].state = SLOT_FREE;
            s->pages[pi].fnext = s->free_head;
            s->free_head = pi;
        }
    }
    while (s->lru_head != SH_NIL)
        mv__sh_unshadow(s, s->lru_head);
    mv__sh_flush_all(s);
    mv_spin_unlock(&s->lock);
    size_t nb = SH_ENTRIES * sizeof(struct sh_node);
    for (uint32_t pi = 0; pi < s->cap; pi++) {
        struct sh_page *sp = &s->pages[pi];
        if (sp->smfn == MV_INVALID_MFN)
            continue;
        struct mv_frame *f = mv__frame(d->h, sp->smfn);
        atomic_store_explicit(&f->owner, MV_OWNER_PENDING, memory_order_release);
        mv__heap_free(d->h, sp->smfn, 0);
        mv__meta_free(d->h, sp->nodes, nb);
        atomic_fetch_sub_explicit(&d->overhead_pages, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&d->overhead_bytes, nb, memory_order_relaxed);
        sp->smfn = MV_INVALID_MFN;
        sp->nodes = NULL;
        sp->state = SLOT_EMPTY;
    }
    s->free_head = SH_NIL;
    s->empty_head = SH_NIL;
    for (uint32_t pi = s->cap; pi-- > 0;) {
        s->pages[pi].fnext = s->empty_head;
        s->empty_head = pi;
    }
    s->pool_frames = 0;
    s->any_used = false;
}

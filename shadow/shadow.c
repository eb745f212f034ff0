/*
 * shadow/shadow.c - the shadow module: per-domain and per-vCPU state, the entry points a
 * hypervisor calls from its traps (CR3 loads, page faults, emulated writes, INVLPG,
 * flushes), the propagation of guest entries into shadow entries and the p2m listener.
 *
 * Every locked path has the same shape: topup (no lock) -> shadow lock -> re-check what
 * was read before the lock (guest entries, the p2m's in-progress count) -> commit, which
 * cannot fail -> unlock -> whatever must run with no lock (dirty marking, puts).
 *
 * Coherence (ARCHITECTURE.md "Decisions"): a leaf is built from a p2m read only while no
 * p2m change is in progress, checked under the shadow lock: a change that starts later
 * has to take that lock in its listener and zaps what we installed. Guest entries read
 * before the lock are read again under it, after every table frame on the path has a
 * shadow (and so is write-protected): from then on every change to them comes through
 * mv_shadow_emulate_write, under the same lock.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "shadow-internal.h"

/* ---- Propagation: guest entry -> shadow entry --------------------------------------- */

uint64_t mv__sh_leaf(struct sh_domain *s, mv_gfn_t gfn, uint64_t g, bool nxe)
{
    struct mv_p2m_entry pe;
    if (mv__p2m_changing(s->d) || mv_p2m_lookup(s->d, gfn, &pe))
        return 0;
    return mv__sh_leaf_pe(s, gfn, &pe, g, nxe);
}

uint64_t mv__sh_leaf_pe(struct sh_domain *s, mv_gfn_t gfn, const struct mv_p2m_entry *ppe,
                        uint64_t g, bool nxe)
{
    /* Field by field: a copy of the whole entry, just written by the lookup with narrower
     * stores, would wait on store forwarding. */
    unsigned type = ppe->type, access = ppe->access;
    if (!(access & MV_P2M_R))
        return 0;
    bool w;
    if (p2m_is_ram(type))
        w = type == MV_P2M_RAM_RW && (access & MV_P2M_W);
    else if (type == MV_P2M_MMIO_DIRECT)
        w = (access & MV_P2M_W) != 0;
    else
        return 0;
    w = w && (g & X86E_RW) && (g & X86E_D) && !mv__sh_gfn_protected(s, gfn);
    uint64_t e = ((uint64_t)ppe->mfn << MV_PAGE_SHIFT) & X86E_ADDR;
    e |= X86E_P | X86E_A | (g & (X86E_US | X86E_G | X86E_PWT | X86E_PCD));
    if (w)
        e |= X86E_RW | X86E_D;
    if (nxe && ((g & X86E_NX) || !(access & MV_P2M_X)))
        e |= X86E_NX;
    return e;
}

/* The shadow a guest entry at level lv (1..3) points to: type and key gfn. */
static unsigned child_of(unsigned lv, uint64_t e, mv_gfn_t *gfn)
{
    mv_gfn_t g = (e & X86E_ADDR) >> MV_PAGE_SHIFT;
    if (lv == 1 && (e & X86E_PS)) {
        *gfn = g & ~511ull;
        return SH_FL1;
    }
    if (lv == 2 && (e & X86E_PS)) {
        *gfn = g & ~((1ull << 18) - 1);
        return SH_FL2;
    }
    *gfn = g;
    return lv; /* the table one level down: SH_L1 for lv 1 ... */
}

static uint64_t upper_entry(const struct sh_page *child, uint64_t g, bool nxe)
{
    uint64_t e = (child->smfn << MV_PAGE_SHIFT) | X86E_P | X86E_A;
    e |= g & (X86E_US | X86E_PWT | X86E_PCD);
    if ((g & X86E_RW) && (!(g & X86E_PS) || (g & X86E_D)))
        e |= X86E_RW;
    if (nxe && (g & X86E_NX))
        e |= X86E_NX;
    return e;
}

uint64_t mv__sh_propagate(struct sh_domain *s, unsigned lv, uint64_t e, bool nxe, bool gb,
                          uint64_t *key)
{
    *key = 0;
    if (!(e & X86E_P) || !(e & X86E_A) || mv__sh_reserved(e, lv, s->d->phys_bits, nxe, gb))
        return 0;
    if (lv == 0) {
        *key = (e & X86E_ADDR) >> MV_PAGE_SHIFT;
        return mv__sh_leaf(s, *key, e, nxe);
    }
    mv_gfn_t cg;
    unsigned ct = child_of(lv, e, &cg);
    uint32_t ci = mv__sh_lookup(s, cg, ct);
    if (ci == SH_NIL)
        return 0; /* built on demand by the next fault */
    if (s->noos) /* about to be linked here, maybe anew */
        mv__sh_resync_below(s, ci, nxe, gb, false);
    *key = ci;
    return upper_entry(&s->pages[ci], e, nxe);
}

/* ---- Module hooks --------------------------------------------------------------------- */

static void listen_start(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count);
static void listen_end(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count);

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t b = 64;
    while (b < n && b < (1u << 24))
        b <<= 1;
    return b;
}

static void free_arrays(mv_host_t *h, struct sh_domain *s)
{
    mv__meta_free(h, s->pages, (size_t)s->cap * sizeof(struct sh_page));
    mv__meta_free(h, s->hash, (size_t)s->nbuckets * sizeof(uint32_t));
    s->pages = NULL;
    s->hash = NULL;
}

/* Slots for the ceiling (the frames come and go; the slot array stays). */
static int alloc_arrays(mv_host_t *h, struct sh_domain *s, uint32_t cap)
{
    s->cap = cap;
    s->nbuckets = pow2_at_least(cap);
    s->pages = mv__meta_alloc(h, (size_t)cap * sizeof(struct sh_page));
    s->hash = mv__meta_alloc(h, (size_t)s->nbuckets * sizeof(uint32_t));
    if (!s->pages || !s->hash) {
        free_arrays(h, s);
        return MV_ENOMEM;
    }
    for (uint32_t i = 0; i < s->nbuckets; i++)
        s->hash[i] = SH_NIL;
    s->empty_head = SH_NIL;
    for (uint32_t i = cap; i-- > 0;) {
        s->pages[i] = (struct sh_page){.smfn = MV_INVALID_MFN, .hnext = SH_NIL, .up = SH_NIL,
                                       .lru_prev = SH_NIL, .lru_next = SH_NIL,
                                       .fnext = s->empty_head};
        s->empty_head = i;
    }
    s->free_head = SH_NIL;
    s->lru_head = s->lru_tail = SH_NIL;
    return 0;
}

static void sh_domain_free(mv_domain_t *d)
{
    struct sh_domain *s = sh_of(d);
    if (!s)
        return;
    mv_host_t *h = d->h;
    if (s->pages)
        mv__sh_free_all(s);
    for (uint32_t i = 0; i < d->nr_vcpus; i++) {
        struct sh_vcpu *sv = d->vcpu[i]->mod[MV_MOD_SHADOW];
        if (sv && sv->snap)
            mv__meta_free(h, sv->snap, (size_t)s->oos_budget * MV_PAGE_SIZE);
        mv__meta_free(h, sv, sizeof(struct sh_vcpu));
        d->vcpu[i]->mod[MV_MOD_SHADOW] = NULL;
    }
    size_t set_bytes = (size_t)d->nr_vcpus * s->oos_budget * sizeof(uint32_t);
    mv__meta_free(h, s->set, set_bytes);
    mv__meta_free(h, s->set_fixed, set_bytes);
    free_arrays(h, s);
    mv__meta_free(h, s, sizeof(*s));
    d->mod[MV_MOD_SHADOW] = NULL;
}

static int sh_domain_init(mv_domain_t *d)
{
    if (d->paging != MV_PAGING_SHADOW)
        return 0;
    mv_host_t *h = d->h;
    struct sh_domain *s = mv__meta_alloc(h, sizeof(*s));
    if (!s)
        return MV_ENOMEM;
    s->d = d;
    s->oos_budget = d->shadow_oos_pages;
    mv_spin_init(&s->lock, MV_LOCK_RANK_SHADOW);
    for (unsigned i = 0; i < SH_RMAP_BUCKETS; i++)
        s->rmap[i] = SH_NIL;
    d->mod[MV_MOD_SHADOW] = s;
    uint64_t floor = d->shadow_pool_pages ? d->shadow_pool_pages
                                          : 64 + SH_FLOOR_PER_VCPU * d->nr_vcpus;
    uint64_t ceiling = d->shadow_pool_max_pages;
    if (!ceiling) {
        uint64_t max = atomic_load_explicit(&d->max_pages, memory_order_relaxed);
        ceiling = sh_pool_for(max) > floor ? sh_pool_for(max) : floor;
        if (ceiling > MV_SHADOW_POOL_MAX)
            ceiling = MV_SHADOW_POOL_MAX;
    }
    s->floor = s->budget = (uint32_t)floor;
    s->ceiling = (uint32_t)ceiling;
    s->follows_size = !d->shadow_pool_max_pages;
    int rc = alloc_arrays(h, s, s->ceiling);
    /* Out-of-sync state: a snapshot per slot of each vCPU, and one resync's working set. */
    size_t set_bytes = (size_t)d->nr_vcpus * s->oos_budget * sizeof(uint32_t);
    size_t oos_bytes = 2 * set_bytes + (size_t)d->nr_vcpus * s->oos_budget * MV_PAGE_SIZE;
    if (!rc && s->oos_budget && (!(s->set = mv__meta_alloc(h, set_bytes)) ||
                                 !(s->set_fixed = mv__meta_alloc(h, set_bytes))))
        rc = MV_ENOMEM;
    for (uint32_t i = 0; !rc && i < d->nr_vcpus; i++) {
        struct sh_vcpu *sv = mv__meta_alloc(h, sizeof(*sv));
        if (!sv) {
            rc = MV_ENOMEM;
            break;
        }
        for (unsigned k = 0; k < SH_ROOTS; k++)
            sv->roots[k] = SH_NIL;
        sv->cur = SH_NIL;
        sv->v = d->vcpu[i];
        for (unsigned k = 0; k < MV_SHADOW_OOS_MAX; k++)
            sv->slot[k] = (uint8_t)k;
        for (unsigned k = 0; k < SH_WALK_CACHE; k++)
            sv->wc[k].seq = UINT64_MAX; /* no p2m reaches that number */
        d->vcpu[i]->mod[MV_MOD_SHADOW] = sv;
        if (s->oos_budget &&
            !(sv->snap = mv__meta_alloc(h, (size_t)s->oos_budget * MV_PAGE_SIZE))) {
            rc = MV_ENOMEM;
            break;
        }
    }
    s->listener = (struct mv_p2m_listener){.ctx = s, .invalidate_start = listen_start,
                                           .invalidate_end = listen_end};
    if (!rc)
        rc = mv_p2m_register_listener(d, &s->listener);
    if (rc)
        sh_domain_free(d);
    else
        atomic_fetch_add_explicit(&d->overhead_bytes,
                                  sizeof(*s) + oos_bytes + (size_t)s->cap * sizeof(struct sh_page) +
                                      (size_t)s->nbuckets * sizeof(uint32_t),
                                  memory_order_relaxed);
    return rc;
}

static int sh_domain_teardown(mv_domain_t *d)
{
    struct sh_domain *s = sh_of(d);
    if (!s)
        return 0;
    mv_p2m_unregister_listener(d, &s->listener);
    mv__sh_free_all(s);
    return 0;
}

static void sh_phys_wrote(mv_domain_t *d, mv_gfn_t gfn, unsigned off, size_t len);

const struct mv_module_ops mv__shadow_module = {
    .name = "shadow",
    .domain_init = sh_domain_init,
    .domain_teardown = sh_domain_teardown,
    .domain_free = sh_domain_free,
    .recount = NULL, /* shadow entries hold no references */
    .audit = mv__sh_audit,
    .phys_wrote = sh_phys_wrote,
};

/* ---- Argument checks ------------------------------------------------------------------- */

static int vcpu_ok(mv_vcpu_t *v, struct sh_domain **s)
{
    if (!v || !(*s = sh_of(v->d)) || !shv_of(v))
        return MV_EINVAL;
    if (mv__domain_dying(v->d))
        return MV_ESRCH;
    return 0;
}

static bool nxe_of(const mv_vcpu_t *v) { return (v->state.efer & MV_EFER_NXE) != 0; }
static bool gb_of(const mv_vcpu_t *v) { return (v->state.flags & MV_VCPUF_GBPAGES) != 0; }

/* ---- CR3 -------------------------------------------------------------------------------- */

/* Make pi the vCPU's current root, pinned among its recent roots (lock held). */
/* The vCPU leaves root `old` for another: a root marked dead (oos.c) goes. */
static void leave_root(struct sh_domain *s, struct sh_vcpu *sv, uint32_t old)
{
    if (old == SH_NIL || !s->pages[old].dead_root)
        return;
    unsigned k;
    for (k = 0; k < SH_ROOTS && sv->roots[k] != old; k++)
        ;
    if (k == SH_ROOTS)
        return;
    for (; k + 1 < SH_ROOTS; k++)
        sv->roots[k] = sv->roots[k + 1];
    sv->roots[SH_ROOTS - 1] = SH_NIL;
    if (--s->pages[old].pins)
        return; /* another vCPU still runs on it */
    mv__sh_unshadow(s, old);
    mv__sh_flush_all(s); /* before its frame serves again (I13) */
    s->unshadowed_freed++;
}

static void use_root(struct sh_domain *s, struct sh_vcpu *sv, uint32_t pi)
{
    if (sv->cur != pi)
        leave_root(s, sv, sv->cur);
    unsigned k;
    for (k = 0; k < SH_ROOTS && sv->roots[k] != pi; k++)
        ;
    if (k == SH_ROOTS) {
        k = SH_ROOTS - 1;
        if (sv->roots[k] != SH_NIL)
            s->pages[sv->roots[k]].pins--;
        s->pages[pi].pins++;
    }
    for (; k > 0; k--)
        sv->roots[k] = sv->roots[k - 1];
    sv->roots[0] = pi;
    sv->cur = pi;
    mv__sh_touch(s, pi);
}

MV_API int mv_shadow_set_cr3(mv_vcpu_t *v, uint64_t guest_cr3, mv_paddr_t *root)
{
    struct sh_domain *s;
    int rc = vcpu_ok(v, &s);
    if (rc)
        return rc;
    if (!root || ((guest_cr3 & ~(1ull << 63)) >> v->d->phys_bits))
        return MV_EINVAL;
    mv_gfn_t gfn = (guest_cr3 & X86E_ADDR) >> MV_PAGE_SHIFT;
    struct mv_p2m_entry pe;
    if (mv_p2m_lookup(v->d, gfn, &pe) || !p2m_is_ram(pe.type))
        return MV_EFAULT;
    if ((rc = mv__sh_topup(v)))
        return rc;
    struct sh_vcpu *sv = shv_of(v);
    mv_spin_lock(&s->lock);
    uint32_t pi = mv__sh_lookup(s, gfn, SH_L4);
    if (pi == SH_NIL)
        pi = mv__sh_create(s, sv, gfn, SH_L4, pe.mfn);
    use_root(s, sv, pi);
    /* A CR3 load invalidates every translation of the vCPU: what the new root reaches is
     * brought in sync (out-of-sync L1s it does not reach may stay stale). */
    mv__sh_resync_below(s, pi, nxe_of(v), gb_of(v), true);
    sv->cr3 = guest_cr3;
    *root = s->pages[pi].smfn << MV_PAGE_SHIFT;
    mv_spin_unlock(&s->lock);
    return 0;
}

/* ---- Page faults ---------------------------------------------------------------------- */

/* A shadow of (gfn, type), found or created (lock held, topup available). */
static uint32_t get_shadow(struct sh_domain *s, struct sh_vcpu *sv, mv_gfn_t gfn, unsigned type)
{
    uint32_t pi = mv__sh_lookup(s, gfn, type);
    if (pi != SH_NIL) {
        mv__sh_touch(s, pi);
        s->pages[pi].idle_writes = 0;
        return pi;
    }
    mv_mfn_t gm = MV_INVALID_MFN;
    struct mv_p2m_entry pe;
    if (sh_type_is_table(type) && !mv_p2m_lookup(s->d, gfn, &pe))
        gm = pe.mfn;
    return mv__sh_create(s, sv, gfn, type, gm);
}

/*
 * Shadow every guest table on the walk's path (lock held, topup full; the root is the
 * vCPU's). Making a shadow removes write access to its frame and flushes: once this
 * returns, the path's tables change only through mv_shadow_emulate_write, under our lock.
 */
static void shadow_path(struct sh_domain *s, struct sh_vcpu *sv, const struct sh_walk *w,
                        uint32_t *path)
{
    for (int l = 2; l >= w->leaf; l--)
        path[l] = get_shadow(s, sv, w->tgfn[l], (unsigned)l + 1); /* the table read at l */
}

/*
 * Are the guest entries the walk read still there? (lock held, after shadow_path) Accessed
 * and dirty bits may have been set since, by another walk, but not cleared: a leaf built
 * from a dirty bit the guest has cleared again would let writes bypass its dirty tracking.
 */
static bool walk_still_valid(struct sh_domain *s, const struct sh_walk *w)
{
    const uint64_t ad = X86E_A | X86E_D;
    for (int l = 3; l >= w->leaf; l--) {
        /* The table frames the walk found still hold their gfns: the p2m's sequence
         * number has not moved (checked under this lock by the caller). */
        unsigned idx = (unsigned)((w->va >> (12 + 9 * l)) & 511);
        uint64_t e = sh_read((const uint64_t *)mv__mfn_va(s->d->h, w->tmfn[l]) + idx) |
                     w->dropped[l];
        if (((e ^ w->e[l]) & ~ad) || (w->e[l] & ad & ~e))
            return false;
    }
    return true;
}

/* The 4 KiB leaf of the walk in L1 shadow pi (lock held, the walk checked). */
static void set_leaf(struct sh_domain *s, uint32_t pi, const struct sh_walk *w, bool nxe)
{
    unsigned idx = (unsigned)((w->va >> 12) & 511);
    mv__sh_set(s, pi, idx, mv__sh_leaf_pe(s, w->gfn, &w->leaf_pe, w->e[0], nxe), w->gfn);
    /* An out-of-sync L1 now follows this guest entry: so must its snapshot, or a later
     * write back to the snapshot's value would go unseen at resync. */
    if (s->pages[pi].oos)
        mv__sh_snapshot(s, pi)[idx] = w->e[0];
}

/*
 * The common fault: the walk's upper shadows exist and are linked from the vCPU's root
 * exactly as the walk's entries say, and only the 4 KiB leaf is missing or stale (lock
 * held). Then path[] is read off the shadow tables themselves - no hash lookups, nothing
 * linked anew, so nothing to resync - and true is returned; otherwise the caller shadows
 * and links the path the long way.
 */
static bool path_linked(struct sh_domain *s, struct sh_vcpu *sv, const struct sh_walk *w,
                        uint32_t *path, bool nxe)
{
    uint32_t pi = sv->cur;
    if (w->leaf != 0 || pi == SH_NIL || s->pages[pi].gfn != w->tgfn[3])
        return false;
    for (int l = 3;; l--) {
        struct sh_page *sp = &s->pages[pi];
        path[l] = pi;
        if (sp->idle_writes)
            sp->idle_writes = 0;
        if (l == 0)
            break;
        unsigned idx = (unsigned)((w->va >> (12 + 9 * l)) & 511);
        uint64_t e = sh_table(s, sp)[idx];
        if (!(e & X86E_P))
            return false;
        uint32_t ci = (uint32_t)sp->nodes[idx].key;
        const struct sh_page *cp = &s->pages[ci];
        if (cp->type != (unsigned)l || cp->gfn != w->tgfn[l - 1] ||
            e != upper_entry(cp, w->e[l], nxe))
            return false;
        pi = ci;
    }
    /* Bottom-up, so that the tables many faults share end nearest the LRU head and the
     * next fault through them finds them there; a root is pinned (never evicted). */
    for (int l = 0; l < 3; l++)
        if (!s->pages[path[l]].pins)
            mv__sh_touch(s, path[l]);
    return true;
}

/* Build the shadows for the walk down to the leaf (lock held, topup full). */
static void build(struct sh_domain *s, struct sh_vcpu *sv, const struct sh_walk *w,
                  const uint32_t *path, bool nxe, bool gb)
{
    uint32_t pi = sv->cur;
    uint64_t va = w->va;
    for (int l = 3; l > w->leaf; l--) {
        unsigned idx = (unsigned)((va >> (12 + 9 * l)) & 511);
        uint32_t ci = path[l - 1]; /* the table entry l points to: shadowed by shadow_path */
        /* Out-of-sync L1s linked anew are brought in sync first (see oos.c). */
        const uint64_t *pt = sh_table(s, &s->pages[pi]);
        if (s->noos && !((sh_read(&pt[idx]) & X86E_P) && s->pages[pi].nodes[idx].key == ci))
            mv__sh_resync_below(s, ci, nxe, gb, false);
        mv__sh_set(s, pi, idx, upper_entry(&s->pages[ci], w->e[l], nxe), ci);
        pi = ci;
    }
    unsigned idx = (unsigned)((va >> (12 + 9 * w->leaf)) & 511);
    if (w->leaf == 0) {
        set_leaf(s, pi, w, nxe);
        return;
    }
    /* A guest superpage: splinter shadows, rights kept in the entry above. */
    mv_gfn_t cg;
    unsigned ct = child_of((unsigned)w->leaf, w->e[w->leaf], &cg);
    uint32_t ci = get_shadow(s, sv, cg, ct);
    mv__sh_set(s, pi, idx, upper_entry(&s->pages[ci], w->e[w->leaf], nxe), ci);
    pi = ci;
    if (ct == SH_FL2) {
        unsigned i1 = (unsigned)((va >> 21) & 511);
        mv_gfn_t g1 = cg + ((mv_gfn_t)i1 << 9);
        uint32_t fi = get_shadow(s, sv, g1, SH_FL1);
        mv__sh_set(s, pi, i1, upper_entry(&s->pages[fi], X86E_RW | X86E_US, nxe), fi);
        pi = fi;
    }
    const uint64_t full = X86E_RW | X86E_US | X86E_D;
    mv__sh_set(s, pi, (unsigned)((va >> 12) & 511), mv__sh_leaf_pe(s, w->gfn, &w->leaf_pe, full, nxe),
               w->gfn);
    (void)gb;
}

static int fault_outcome(struct sh_domain *s, struct mv_shadow_outcome *out, uint32_t kind,
                         uint32_t ec, mv_paddr_t gpa)
{
    out->kind = kind;
    out->error_code = ec;
    out->gpa = gpa;
    mv_spin_lock(&s->lock);
    s->faults[kind]++;
    mv__sh_pool_tick(s);
    mv_spin_unlock(&s->lock);
    return 0;
}

MV_API int mv_shadow_page_fault(mv_vcpu_t *v, uint64_t gva, uint32_t error_code, uint32_t access,
                                struct mv_shadow_outcome *out)
{
    struct sh_domain *s;
    int rc = vcpu_ok(v, &s);
    if (rc)
        return rc;
    if (!out || (access & ~(MV_SHADOW_ACC_AC | MV_SHADOW_ACC_IMPLICIT)))
        return MV_EINVAL;
    struct sh_vcpu *sv = shv_of(v);
    if (sv->cur == SH_NIL) {
        mv_paddr_t r;
        if ((rc = mv_shadow_set_cr3(v, v->state.cr3, &r)))
            return rc;
    }
    bool nxe = nxe_of(v), gb = gb_of(v), write = (error_code & MV_PFEC_W) != 0;
    struct sh_walk w;
    bool marked = false; /* a log-dirty write fault was taken: walk once more */
again:
    for (int tries = 0;; tries++) {
        rc = mv__sh_walk(v, sv->cr3, gva, error_code, access, &w);
        if (rc != MV_EAGAIN || tries == 8)
            break;
    }
    if (rc == MV_EAGAIN)
        return fault_outcome(s, out, MV_SHADOW_FIXED, 0, 0); /* the guest races itself */
    if (rc < 0)
        return rc;
    if (rc == 1) {
        if (!mv__p2m_unchanged(v->d, w.seq))
            return fault_outcome(s, out, MV_SHADOW_FIXED, 0, 0); /* read while it changed */
        return fault_outcome(s, out, MV_SHADOW_INJECT, w.pfec, 0);
    }
    mv_paddr_t gpa = (w.gfn << MV_PAGE_SHIFT) | (gva & (MV_PAGE_SIZE - 1));
    struct mv_p2m_entry pe;
    if (mv_p2m_lookup(v->d, w.gfn, &pe) ||
        !(p2m_is_ram(pe.type) || (pe.type == MV_P2M_MMIO_DIRECT && !(error_code & MV_PFEC_ID))))
        return fault_outcome(s, out, MV_SHADOW_MMIO, 0, gpa);
    unsigned need = write ? MV_P2M_W : (error_code & MV_PFEC_ID) ? MV_P2M_X : MV_P2M_R;
    if (write) {
        if (pe.type == MV_P2M_RAM_SHARED)
            return MV_EOPNOTSUPP; /* unsharing belongs to the sharing module */
        if (pe.type == MV_P2M_RAM_RO)
            return fault_outcome(s, out, MV_SHADOW_DENIED, 0, gpa);
        if (pe.type == MV_P2M_RAM_LOGDIRTY) {
            if (marked)
                return fault_outcome(s, out, MV_SHADOW_FIXED, 0, 0); /* logging again */
            if ((rc = mv_p2m_write_fault(v->d, w.gfn))) {
                if (rc == MV_ENOMEM || rc == MV_ESRCH)
                    return rc;
                /* The entry changed since our lookup (ballooned out, retyped): the guest's
                 * retry faults again and meets what is there now. */
                return fault_outcome(s, out, MV_SHADOW_FIXED, 0, 0);
            }
            /* Marked dirty and writable: the p2m moved its sequence number, so walk
             * again under the new one. */
            marked = true;
            goto again;
        }
    }
    if (p2m_is_ram(pe.type) && (pe.access & need) != need)
        return fault_outcome(s, out, MV_SHADOW_DENIED, 0, gpa);
    if (write && !w.w)
        return fault_outcome(s, out, MV_SHADOW_EMULATE, 0, gpa); /* CR0.WP clear */
    if ((rc = mv__sh_topup(v)))
        return rc;
    mv_spin_lock(&s->lock);
    s->section++;
    uint32_t kind = MV_SHADOW_FIXED;
    if (!mv__p2m_unchanged(v->d, w.seq)) {
        /* retry: the p2m changed since the walk read it (or is changing) */
    } else {
        w.leaf_pe = pe; /* read under the same sequence number */
        /*
         * The walk is checked again only once every table on its path is write-protected
         * (Xen's shadow_check_gwalk runs after write access is removed, for the same
         * reason): until the flush of a new table shadow completes, another vCPU may still
         * write the table through a translation it holds, and a check made before would
         * let a leaf be built from an entry the guest has already replaced.
         */
        uint32_t path[4];
        bool linked = path_linked(s, sv, &w, path, nxe);
        if (!linked)
            shadow_path(s, sv, &w, path);
        if (!walk_still_valid(s, &w)) {
            /* retry: a guest table write raced with us */
        } else if (write && mv__sh_gfn_protected(s, w.gfn)) {
            kind = MV_SHADOW_EMULATE; /* the leaf's frame is a table, maybe of this path */
        } else if (linked) {
            set_leaf(s, path[0], &w, nxe);
        } else {
            build(s, sv, &w, path, nxe, gb);
        }
    }
    s->faults[kind]++;
    mv__sh_pool_tick(s);
    mv_spin_unlock(&s->lock);
    out->kind = kind;
    out->error_code = 0;
    out->gpa = kind == MV_SHADOW_EMULATE ? gpa : 0;
    return 0;
}

MV_API int mv_shadow_gva_to_gpa(mv_vcpu_t *v, uint64_t gva, uint32_t error_code, uint32_t access,
                                mv_paddr_t *gpa, uint32_t *pfec)
{
    struct sh_domain *s;
    int rc = vcpu_ok(v, &s);
    if (rc)
        return rc;
    if (!gpa || !pfec)
        return MV_EINVAL;
    struct sh_vcpu *sv = shv_of(v);
    uint64_t cr3 = sv->cur == SH_NIL ? v->state.cr3 : sv->cr3;
    struct sh_walk w;
    for (int tries = 0; tries < 8; tries++) {
        rc = mv__sh_walk(v, cr3, gva, error_code, access, &w);
        if (rc != MV_EAGAIN)
            break;
    }
    if (rc < 0)
        return rc;
    if (rc == 1) {
        *pfec = w.pfec;
        return MV_EFAULT;
    }
    *pfec = 0;
    *gpa = (w.gfn << MV_PAGE_SHIFT) | (gva & (MV_PAGE_SIZE - 1));
    return 0;
}

/* ---- Emulated writes -------------------------------------------------------------------- */

/*
 * Revalidate entries [first, last] of gfn's table shadows tab from the guest frame (lock
 * held). True when a present entry changed (the caller flushes). An out-of-sync L1's
 * snapshot follows, so that its next resync does not count these entries again.
 */
bool mv__sh_revalidate(struct sh_domain *s, const uint32_t tab[SH_NR_TYPES],
                       const uint64_t *guest, unsigned first, unsigned last, bool nxe, bool gb)
{
    bool changed = false;
    for (unsigned t = SH_L1; t <= SH_L4; t++) {
        uint32_t pi = tab[t];
        if (pi == SH_NIL)
            continue;
        uint64_t *st = sh_table(s, &s->pages[pi]);
        uint64_t *snap = s->pages[pi].oos ? mv__sh_snapshot(s, pi) : NULL;
        for (unsigned i = first; i <= last; i++) {
            uint64_t g = sh_read(&guest[i]);
            uint64_t key, ne = mv__sh_propagate(s, t - 1, g, nxe, gb, &key);
            if (snap)
                snap[i] = g;
            if (ne != st[i]) {
                /* A TLB can hold only what a present entry gave: filling a hole needs
                 * no flush, anything else does. */
                changed |= (st[i] & X86E_P) != 0;
                mv__sh_set(s, pi, i, ne, key);
            }
        }
    }
    return changed;
}

/*
 * Guest memory is written by whole aligned 8-byte words with atomic operations: walkers
 * read guest entries and set their accessed and dirty bits (a compare-and-swap) with no
 * lock held, so an entry must never be seen half written, and bytes of a word the write
 * does not cover must keep whatever a walker put there meanwhile.
 */
static void write_words(uint8_t *page, unsigned off, const uint8_t *src, size_t len)
{
    for (unsigned w = off & ~7u; w < off + len; w += 8) {
        _Atomic uint64_t *slot = (_Atomic uint64_t *)(void *)(page + w);
        unsigned lo = w < off ? off - w : 0;
        unsigned hi = off + len < w + 8 ? (unsigned)(off + len - w) : 8;
        const uint8_t *from = src + (w + lo - off);
        uint64_t nw;
        if (lo == 0 && hi == 8) {
            memcpy(&nw, from, 8);
            atomic_store_explicit(slot, nw, memory_order_release);
            continue;
        }
        uint64_t old = atomic_load_explicit(slot, memory_order_acquire);
        do {
            nw = old;
            memcpy((uint8_t *)&nw + lo, from, hi - lo);
        } while (!atomic_compare_exchange_weak_explicit(slot, &old, nw, memory_order_acq_rel,
                                                        memory_order_acquire));
    }
}

/*
 * LOCK CMPXCHG of len (1, 2, 4, 8) naturally aligned bytes at off, compared and written in
 * one atomic step on the word that holds them - as the hardware does, so that an accessed
 * or dirty bit a walker sets in between makes the exchange fail instead of being lost.
 * True when written; otherwise *expected holds the bytes found.
 */
static bool cmpxchg_word(uint8_t *page, unsigned off, uint64_t *expected, uint64_t desired,
                         size_t len)
{
    _Atomic uint64_t *slot = (_Atomic uint64_t *)(void *)(page + (off & ~7u));
    unsigned lo = off & 7u;
    uint64_t old = atomic_load_explicit(slot, memory_order_acquire);
    for (;;) {
        uint64_t cur = 0, nw = old;
        memcpy(&cur, (uint8_t *)&old + lo, len);
        if (cur != *expected) {
            *expected = cur;
            return false;
        }
        memcpy((uint8_t *)&nw + lo, &desired, len);
        if (atomic_compare_exchange_weak_explicit(slot, &old, nw, memory_order_acq_rel,
                                                  memory_order_acquire))
            return true;
    }
}

/*
 * The write and what follows it, with the lock held and gfn's entry pe current until the
 * unlock. The write goes to guest memory first, then every table shadow of the frame
 * follows the entries it covered, then the heuristics see it (oos.c).
 */
static int emulate_locked(struct sh_domain *s, mv_vcpu_t *v, mv_gfn_t gfn,
                          const struct mv_p2m_entry *pe, unsigned off, const void *bytes,
                          size_t len, bool cmp, uint64_t *expected)
{
    if (pe->type == MV_P2M_RAM_RW && !(pe->access & MV_P2M_W))
        return MV_EACCES;
    uint8_t *page = (uint8_t *)mv__mfn_va(v->d->h, pe->mfn);
    if (cmp) {
        if (!cmpxchg_word(page, off, expected, *(const uint64_t *)bytes, len))
            return MV_EAGAIN;
    } else {
        write_words(page, off, bytes, len);
    }
    s->emulated++;
    uint32_t tab[SH_NR_TYPES];
    if (!mv__sh_tables_of(s, gfn, tab))
        return 0; /* no longer a page table (dropped since the guest's write trapped) */
    const uint64_t *guest = (const uint64_t *)page;
    unsigned first = off / 8, last = (off + (unsigned)len - 1) / 8;
    if (last - first + 1 >= SH_BULK_WRITE_ENTRIES && !mv__sh_bulk_write(s, gfn, tab))
        return 0;
    if (mv__sh_revalidate(s, tab, guest, first, last, nxe_of(v), gb_of(v)))
        mv__sh_flush_all(s);
    bool cleared = false;
    for (unsigned i = first; i <= last && !cleared; i++)
        cleared = !(sh_read(&guest[i]) & X86E_P);
    mv__sh_after_write(s, shv_of(v), gfn, tab, guest, cleared);
    return 0;
}

static bool emulate_target_ok(const struct mv_p2m_entry *pe)
{
    return p2m_is_ram(pe->type) && pe->type != MV_P2M_RAM_RO && pe->type != MV_P2M_RAM_SHARED;
}

static int emulate(mv_vcpu_t *v, mv_paddr_t gpa, const void *bytes, size_t len, bool cmp,
                   uint64_t *expected)
{
    struct sh_domain *s;
    int rc = vcpu_ok(v, &s);
    if (rc)
        return rc;
    if (!bytes || !len || len > MV_PAGE_SIZE || (gpa & (MV_PAGE_SIZE - 1)) + len > MV_PAGE_SIZE)
        return MV_EINVAL;
    mv_domain_t *d = v->d;
    mv_gfn_t gfn = gpa >> MV_PAGE_SHIFT;
    unsigned off = (unsigned)(gpa & (MV_PAGE_SIZE - 1));
    /* The written frame is a page table, most often one this vCPU walked lately. */
    uint64_t seq = mv__p2m_seq(d);
    struct mv_p2m_entry pe;
    mv__sh_wc_lookup(v, gfn, seq, &pe);
    if (!p2m_is_ram(pe.type))
        return MV_EFAULT;
    if (pe.type == MV_P2M_RAM_RO)
        return MV_EACCES;
    if (pe.type == MV_P2M_RAM_SHARED)
        return MV_EOPNOTSUPP;
    mv_spin_lock(&s->lock);
    if (mv__p2m_unchanged(d, seq)) {
        /*
         * The entry read is still the p2m's, and stays so until we unlock: a change to it
         * has to take this lock in our listener first (XSA-219: the frame cannot be freed
         * under the write, and no frame hold is needed).
         */
        rc = emulate_locked(s, v, gfn, &pe, off, bytes, len, cmp, expected);
        mv_spin_unlock(&s->lock);
        /* While logging, a writable ram_rw entry already has its dirty bit (I14): only a
         * ram_logdirty target is marked. */
        if (!rc && pe.type == MV_P2M_RAM_LOGDIRTY)
            rc = mv__p2m_engine_wrote(d, gfn, 1);
        return rc;
    }
    mv_spin_unlock(&s->lock);
    /* The p2m is changing: hold the frame across the write instead, and take the entry
     * again under the lock (removed or retyped since the fault: refused). */
    struct mv_frame *f = mv__frame(d->h, pe.mfn);
    if (!f || mv__get_page(d, f))
        return MV_EFAULT;
    mv_spin_lock(&s->lock);
    struct mv_p2m_entry now;
    if (mv_p2m_lookup(d, gfn, &now) || now.mfn != pe.mfn || !emulate_target_ok(&now))
        rc = MV_EFAULT;
    else
        rc = emulate_locked(s, v, gfn, &now, off, bytes, len, cmp, expected);
    mv_spin_unlock(&s->lock);
    mv__put_page(d->h, f);
    if (!rc)
        rc = mv__p2m_engine_wrote(d, gfn, 1);
    return rc;
}

/*
 * A write by the engine for a caller (mv_guest_phys_write): the entries it touched are
 * revalidated in every shadow of the frame, with vCPU 0's paging controls (NXE, 1 GiB
 * pages), as after an emulated write.
 */
static void sh_phys_wrote(mv_domain_t *d, mv_gfn_t gfn, unsigned off, size_t len)
{
    struct sh_domain *s = sh_of(d);
    if (!s || !len || off + len > MV_PAGE_SIZE)
        return;
    mv_spin_lock(&s->lock);
    struct mv_p2m_entry pe;
    uint32_t tab[SH_NR_TYPES];
    if (s->any_used && mv__sh_tables_of(s, gfn, tab) && !mv_p2m_lookup(d, gfn, &pe) &&
        p2m_is_ram(pe.type)) {
        const uint64_t *page = (const uint64_t *)mv__mfn_va(d->h, pe.mfn);
        if (mv__sh_revalidate(s, tab, page, off / 8, (off + (unsigned)len - 1) / 8,
                       nxe_of(d->vcpu[0]), gb_of(d->vcpu[0])))
            mv__sh_flush_all(s);
    }
    mv_spin_unlock(&s->lock);
}

MV_API int mv_shadow_emulate_write(mv_vcpu_t *v, mv_paddr_t gpa, const void *bytes, size_t len)
{
    return emulate(v, gpa, bytes, len, false, NULL);
}

MV_API int mv_shadow_emulate_cmpxchg(mv_vcpu_t *v, mv_paddr_t gpa, uint64_t *expected,
                                     uint64_t desired, size_t len)
{
    if (!expected || (len != 1 && len != 2 && len != 4 && len != 8) || (gpa & (len - 1)))
        return MV_EINVAL;
    uint64_t mask = len == 8 ? ~0ull : (1ull << (8 * len)) - 1;
    if ((*expected & ~mask) || (desired & ~mask))
        return MV_EINVAL;
    return emulate(v, gpa, &desired, len, true, expected);
}

/* ---- INVLPG, flushes ------------------------------------------------------------------- */

MV_API int mv_shadow_invlpg(mv_vcpu_t *v, uint64_t gva)
{
    struct sh_domain *s;
    int rc = vcpu_ok(v, &s);
    if (rc)
        return rc;
    struct sh_vcpu *sv = shv_of(v);
    mv_spin_lock(&s->lock);
    /*
     * The leaf for gva goes, in sync or not: the next access rebuilds it from the guest's
     * entry as it is now, which is all INVLPG promises (other out-of-sync entries may stay
     * stale until their own invalidation; upper shadows are never out of sync).
     */
    uint32_t pi = sv->cur;
    for (int l = 3; pi != SH_NIL; l--) {
        struct sh_page *sp = &s->pages[pi];
        unsigned idx = (unsigned)((gva >> (12 + 9 * (sp->type == SH_FL1 ? 0 : sp->type == SH_FL2
                                                                         ? 1 : sp->type - 1))) & 511);
        uint64_t e = sh_table(s, sp)[idx];
        if (!(e & X86E_P))
            break;
        if (sh_type_leafy(sp->type)) {
            mv__sh_set(s, pi, idx, 0, 0);
            s->zapped++;
            break;
        }
        pi = (uint32_t)sp->nodes[idx].key;
        (void)l;
    }
    struct mv_flush_request req = {.domid = (mv_domid_t)v->d->domid,
                                   .scope = MV_FLUSH_LINEAR_ONE, .nr_vcpus = v->d->nr_vcpus,
                                   .linear = gva};
    req.vcpu_mask[v->id / 64] |= 1ull << (v->id % 64);
    mv__flush(v->d->h, &req);
    mv_spin_unlock(&s->lock);
    return 0;
}

MV_API int mv_shadow_flush(mv_vcpu_t *v)
{
    struct sh_domain *s;
    int rc = vcpu_ok(v, &s);
    if (rc)
        return rc;
    mv_spin_lock(&s->lock);
    struct sh_vcpu *sv = shv_of(v);
    if (sv->cur != SH_NIL) /* what the vCPU's root reaches is brought in sync */
        mv__sh_resync_below(s, sv->cur, nxe_of(v), gb_of(v), true);
    mv_spin_unlock(&s->lock);
    struct mv_flush_request req = {.domid = (mv_domid_t)v->d->domid,
                                   .scope = MV_FLUSH_LINEAR_ALL, .nr_vcpus = v->d->nr_vcpus};
    req.vcpu_mask[v->id / 64] |= 1ull << (v->id % 64);
    mv__flush(v->d->h, &req);
    return 0;
}

MV_API int mv_shadow_blow(mv_domain_t *d)
{
    struct sh_domain *s = d ? sh_of(d) : NULL;
    if (!s)
        return MV_EINVAL;
    mv_spin_lock(&s->lock);
    for (uint32_t pi = s->lru_head; pi != SH_NIL;) {
        uint32_t next = s->pages[pi].lru_next;
        if (!s->pages[pi].pins)
            mv__sh_unshadow(s, pi);
        pi = next;
    }
    mv__sh_flush_all(s);
    mv_spin_unlock(&s->lock);
    return 0;
}

/* ---- The p2m listener ------------------------------------------------------------------ */

static void listen_start(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count)
{
    struct sh_domain *s = ctx;
    (void)d;
    mv_spin_lock(&s->lock);
    if (mv__sh_zap_gfns(s, first, count))
        mv__sh_flush_all(s);
    mv_spin_unlock(&s->lock);
}

/* A guest table whose gfn no longer maps the frame we shadowed goes with it. */
static bool stale_table(struct sh_domain *s, const struct sh_page *sp)
{
    struct mv_p2m_entry pe;
    return mv_p2m_lookup(s->d, sp->gfn, &pe) || !p2m_is_ram(pe.type) || pe.mfn != sp->gmfn;
}

static void listen_end(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count)
{
    struct sh_domain *s = ctx;
    (void)d;
    bool any = false;
    mv_spin_lock(&s->lock);
    for (uint32_t pi = s->lru_head; pi != SH_NIL;) {
        struct sh_page *sp = &s->pages[pi];
        uint32_t next = sp->lru_next;
        if (sh_type_is_table(sp->type) && sp->gfn - first < count && stale_table(s, sp)) {
            /* A root a vCPU holds stays, emptied: its CR3 names a hole now. */
            if (sp->pins) {
                uint64_t *t = sh_table(s, sp);
                for (unsigned i = 0; i < SH_ENTRIES; i++)
                    if (t[i])
                        mv__sh_set(s, pi, i, 0, 0);
            } else {
                mv__sh_unshadow(s, pi);
            }
            any = true;
        }
        pi = next;
    }
    if (any)
        mv__sh_flush_all(s);
    mv_spin_unlock(&s->lock);
}

/* ---- Budget and statistics ---------------------------------------------------------------- */

MV_API int mv_shadow_set_budget(mv_domain_t *d, uint64_t frames)
{
    struct sh_domain *s = d ? sh_of(d) : NULL;
    if (!s)
        return MV_EINVAL;
    if (frames < (uint64_t)SH_FLOOR_PER_VCPU * d->nr_vcpus || frames > MV_SHADOW_POOL_MAX)
        return MV_EINVAL;
    if (s->any_used || s->pool_frames)
        return MV_EBUSY;
    struct sh_domain tmp = *s;
    int rc = alloc_arrays(d->h, &tmp, (uint32_t)frames);
    if (rc)
        return rc;
    size_t old_bytes = (size_t)s->cap * sizeof(struct sh_page) +
                       (size_t)s->nbuckets * sizeof(uint32_t);
    free_arrays(d->h, s);
    atomic_fetch_sub_explicit(&d->overhead_bytes, old_bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->overhead_bytes,
                              (size_t)tmp.cap * sizeof(struct sh_page) +
                                  (size_t)tmp.nbuckets * sizeof(uint32_t),
                              memory_order_relaxed);
    s->cap = tmp.cap;
    s->budget = s->floor = s->ceiling = (uint32_t)frames;
    s->follows_size = false;
    s->nbuckets = tmp.nbuckets;
    s->pages = tmp.pages;
    s->hash = tmp.hash;
    s->empty_head = tmp.empty_head;
    s->free_head = SH_NIL;
    s->lru_head = s->lru_tail = SH_NIL;
    return 0;
}

MV_API int mv_shadow_trim(mv_domain_t *d)
{
    struct sh_domain *s = d ? sh_of(d) : NULL;
    if (!s)
        return MV_EINVAL;
    mv__sh_pool_trim(s, true);
    return 0;
}

/* The first layout of struct mv_shadow_stats ended here; later fields are filled if they fit. */
#define SH_STATS_V1 (offsetof(struct mv_shadow_stats, zapped) + sizeof(uint64_t))

MV_API int mv_shadow_stats(const mv_domain_t *d, struct mv_shadow_stats *st)
{
    struct sh_domain *s = d ? sh_of(d) : NULL;
    if (!s || !st)
        return MV_EINVAL;
    size_t size;
    memcpy(&size, st, sizeof(size));
    /* A caller built against the first layout gets its fields, nothing past its size. */
    size_t ours = size >= sizeof(*st) ? sizeof(*st) : SH_STATS_V1;
    int rc = mv__prepare_out(st, ours);
    if (rc)
        return rc;
    struct mv_shadow_stats all = {.size = size};
    uint64_t owned = atomic_load_explicit(&d->pages, memory_order_relaxed);
    mv_spin_lock(&s->lock);
    all.budget = s->budget;
    all.pool_frames = s->pool_frames;
    for (unsigned t = 0; t < SH_NR_TYPES; t++)
        all.shadows[t] = s->by_type[t];
    for (unsigned k = 0; k < MV_SHADOW_NR_KINDS; k++)
        all.faults[k] = s->faults[k];
    all.emulated_writes = s->emulated;
    all.evictions = s->evictions;
    all.zapped = s->zapped;
    all.oos_pages = s->noos;
    all.unsyncs = s->unsyncs;
    all.resyncs = s->resyncs;
    all.resync_fixed = s->resync_fixed;
    all.unshadowed_early = s->unshadowed_early;
    all.unshadowed_freed = s->unshadowed_freed;
    all.pool_floor = s->floor;
    all.pool_ceiling = s->ceiling;
    all.pool_grows = s->grows;
    all.pool_shrinks = s->shrinks;
    all.rebuilds = s->rebuilds;
    uint64_t bytes = s->pool_frames * (MV_PAGE_SIZE + SH_ENTRIES * sizeof(struct sh_node));
    mv_spin_unlock(&s->lock);
    all.bytes_per_gib = owned ? bytes * ((1ull << 30) >> MV_PAGE_SHIFT) / owned : 0;
    memcpy(st, &all, ours);
    return 0;
}

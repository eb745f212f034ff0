/*
 * mm/domain.c - domains and their vCPUs: creation, the domain table, frames owned by a
 * domain, statistics, and preemptible destruction.
 *
 * Lifecycle: live -> dying (first destroy call: nothing new is allocated, every operation
 * refuses with MV_ESRCH) -> modules torn down in reverse order -> every frame's allocation
 * reference dropped (a scan of the frame table, resumable at a cursor) -> gone, once no
 * outside reference holds a frame. Each phase keeps its progress in the domain, so a
 * preempted call (MV_EAGAIN) continues where it stopped; concurrent callers serialize on
 * a claim on the teardown (a second caller gets MV_EAGAIN).
 *
 * Locks: the host's domain-table rwlock (MV_LOCK_RANK_DOMTABLE) guards insertion and
 * removal; lookups read the table's atomic slots. Teardown holds no lock while it frees.
 */
#include "mm-internal.h"

#define TEARDOWN_SCAN_BUDGET 65536u /* frames scanned per destroy call */

int mv__domains_init(mv_host_t *h)
{
    mv_rw_init(&h->domtable_lock, MV_LOCK_RANK_DOMTABLE);
    h->domains = mv__meta_alloc(h, (MV_DOMID_MAX + 1) * sizeof(*h->domains));
    for (unsigned m = 0; m < MV_MOD_NR; m++)
        h->modules[m] = mv__module_table[m];
    return h->domains ? 0 : MV_ENOMEM;
}

static void domain_free_struct(mv_domain_t *d);

void mv__domains_fini(mv_host_t *h)
{
    /*
     * Domains still alive when the host goes: destroy them; one that outside references
     * keep from finishing is freed anyway - its memory goes with the host.
     */
    for (uint32_t id = 0; h->domains && h->nr_domains && id <= MV_DOMID_MAX; id++) {
        mv_domain_t *d = atomic_load_explicit(&h->domains[id], memory_order_acquire);
        if (!d)
            continue;
        int rc;
        while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
            ;
        if (rc) {
            atomic_store_explicit(&h->domains[id], NULL, memory_order_release);
            h->nr_domains--;
            for (int m = MV_MOD_NR; m-- > 0;)
                if (h->modules[m] && h->modules[m]->domain_free)
                    h->modules[m]->domain_free(d);
            domain_free_struct(d);
        }
    }
    if (h->domains)
        mv__meta_free(h, h->domains, (MV_DOMID_MAX + 1) * sizeof(*h->domains));
    h->domains = NULL;
}

void mv__host_register_module(mv_host_t *h, enum mv_module id, const struct mv_module_ops *ops)
{
    MV_ASSERT(id < MV_MOD_NR);
    h->modules[id] = ops;
}

static size_t domain_bytes(uint32_t nr_vcpus)
{
    return sizeof(struct mv_domain) + nr_vcpus * sizeof(struct mv_vcpu *);
}

static void domain_free_struct(mv_domain_t *d)
{
    mv_host_t *h = d->h;
    for (uint32_t i = 0; i < d->nr_vcpus; i++)
        mv__meta_free(h, d->vcpu[i], sizeof(struct mv_vcpu));
    mv__meta_free(h, d, domain_bytes(d->nr_vcpus));
}

static int check_config(mv_host_t *h, const struct mv_domain_config *c)
{
    if (c->domid > MV_DOMID_MAX)
        return MV_ERANGE;
    if (c->type != MV_DOMAIN_PV && c->type != MV_DOMAIN_HVM)
        return MV_EINVAL;
    if (c->type == MV_DOMAIN_PV && c->paging != MV_PAGING_PV)
        return MV_EINVAL;
    if (c->type == MV_DOMAIN_HVM && c->paging != MV_PAGING_HAP && c->paging != MV_PAGING_SHADOW)
        return MV_EINVAL;
    if (c->paging == MV_PAGING_SHADOW && !h->modules[MV_MOD_SHADOW])
        return MV_EOPNOTSUPP; /* shadow paging is not built yet */
    if (!c->nr_vcpus || c->nr_vcpus > MV_MAX_VCPUS)
        return MV_EINVAL;
    if (c->flags & ~(MV_DOMF_LINEAR_PT | MV_DOMF_SHADOW_SYNC))
        return MV_EINVAL;
    if ((c->flags & MV_DOMF_SHADOW_SYNC) && c->paging != MV_PAGING_SHADOW)
        return MV_EINVAL;
    if ((c->flags & MV_DOMF_LINEAR_PT) && c->type != MV_DOMAIN_PV)
        return MV_EINVAL;
    if (c->phys_bits && (c->phys_bits < 32 || c->phys_bits > 52))
        return MV_EINVAL;
    if ((c->shadow_pool_pages || c->shadow_pool_max_pages || c->shadow_oos_pages) &&
        c->paging != MV_PAGING_SHADOW)
        return MV_EINVAL;
    if (c->shadow_pool_max_pages &&
        (c->shadow_pool_max_pages > MV_SHADOW_POOL_MAX ||
         c->shadow_pool_max_pages < (uint64_t)MV_SHADOW_FLOOR_PER_VCPU * c->nr_vcpus ||
         c->shadow_pool_max_pages < c->shadow_pool_pages))
        return MV_EINVAL;
    if (c->shadow_oos_pages > MV_SHADOW_OOS_MAX)
        return MV_EINVAL;
    if (c->shadow_pool_pages && (c->shadow_pool_pages < (uint64_t)MV_SHADOW_FLOOR_PER_VCPU *
                                                             c->nr_vcpus ||
                                 c->shadow_pool_pages > MV_SHADOW_POOL_MAX))
        return MV_EINVAL;
    if (c->node_affinity != MV_NODE_ANY && c->node_affinity >= h->nr_nodes)
        return MV_ENODEV;
    if (c->max_pages > h->total_frames)
        return MV_ENOMEM;
    return 0;
}

MV_API int mv_domain_create(mv_host_t *h, const struct mv_domain_config *ucfg,
                            mv_domain_t **out)
{
    struct mv_domain_config cfg;
    if (!h || !out)
        return MV_EINVAL;
    int rc = mv__copy_sized(&cfg, sizeof(cfg), ucfg,
                            offsetof(struct mv_domain_config, phys_bits) + sizeof(uint32_t));
    if (rc || (rc = check_config(h, &cfg)))
        return rc;
    if (mv_domain_lookup(h, cfg.domid))
        return MV_EEXIST;

    mv_domain_t *d = mv__meta_alloc(h, domain_bytes(cfg.nr_vcpus));
    if (!d)
        return MV_ENOMEM;
    d->h = h;
    d->domid = cfg.domid;
    d->type = cfg.type;
    d->paging = cfg.paging;
    d->flags = cfg.flags;
    d->nr_vcpus = cfg.nr_vcpus;
    d->node_affinity = cfg.node_affinity;
    d->phys_bits = cfg.phys_bits ? cfg.phys_bits : 40;
    d->shadow_pool_pages = cfg.shadow_pool_pages;
    d->shadow_pool_max_pages = cfg.shadow_pool_max_pages;
    if (cfg.paging == MV_PAGING_SHADOW && !(cfg.flags & MV_DOMF_SHADOW_SYNC))
        d->shadow_oos_pages = cfg.shadow_oos_pages ? cfg.shadow_oos_pages
                                                   : MV_SHADOW_OOS_DEFAULT;
    atomic_init(&d->max_pages, cfg.max_pages);
    atomic_init(&d->overhead_bytes, domain_bytes(cfg.nr_vcpus));
    for (uint32_t i = 0; i < cfg.nr_vcpus; i++) {
        struct mv_vcpu *v = mv__meta_alloc(h, sizeof(*v));
        if (!v) {
            d->nr_vcpus = i;
            domain_free_struct(d);
            return MV_ENOMEM;
        }
        v->d = d;
        v->id = i;
        v->state.size = sizeof(v->state);
        /* Reset state: paging on in long mode, write protection on, as firmware leaves it. */
        v->state.cr0 = MV_CR0_PG | MV_CR0_WP | 0x11;
        v->state.cr4 = MV_CR4_PAE;
        v->state.efer = MV_EFER_LME | (1ull << 10);
        d->vcpu[i] = v;
        atomic_fetch_add_explicit(&d->overhead_bytes, sizeof(*v), memory_order_relaxed);
    }

    /* Modules set up their per-domain state; a failure unwinds those already done. */
    int m;
    for (m = 0; m < MV_MOD_NR; m++) {
        const struct mv_module_ops *ops = h->modules[m];
        if (ops && ops->domain_init && (rc = ops->domain_init(d)))
            break;
    }
    if (m < MV_MOD_NR) {
        while (m-- > 0)
            if (h->modules[m] && h->modules[m]->domain_free)
                h->modules[m]->domain_free(d);
        domain_free_struct(d);
        return rc;
    }

    mv_rw_write_lock(&h->domtable_lock);
    if (atomic_load_explicit(&h->domains[d->domid], memory_order_relaxed)) {
        mv_rw_write_unlock(&h->domtable_lock);
        for (m = MV_MOD_NR; m-- > 0;)
            if (h->modules[m] && h->modules[m]->domain_free)
                h->modules[m]->domain_free(d);
        domain_free_struct(d);
        return MV_EEXIST; /* lost a race for the same id */
    }
    atomic_store_explicit(&h->domains[d->domid], d, memory_order_release);
    h->nr_domains++;
    mv_rw_write_unlock(&h->domtable_lock);
    *out = d;
    return 0;
}

MV_API mv_domain_t *mv_domain_lookup(mv_host_t *h, uint32_t domid)
{
    return h ? mv__domain_of_owner(h, domid) : NULL;
}

MV_API uint32_t mv_domain_id(const mv_domain_t *d)
{
    return d ? d->domid : UINT32_MAX;
}

MV_API mv_host_t *mv_domain_host(const mv_domain_t *d)
{
    return d ? d->h : NULL;
}

MV_API int mv_domain_set_max_pages(mv_domain_t *d, uint64_t max_pages)
{
    if (!d)
        return MV_EINVAL;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    if (max_pages > d->h->total_frames)
        return MV_ENOMEM;
    if (max_pages < atomic_load_explicit(&d->pages, memory_order_acquire))
        return MV_EBUSY;
    atomic_store_explicit(&d->max_pages, max_pages, memory_order_release);
    return 0;
}

MV_API int mv_domain_stats(const mv_domain_t *d, struct mv_domain_stats *st)
{
    if (!d)
        return MV_EINVAL;
    int rc = mv__prepare_out(st, sizeof(*st));
    if (rc)
        return rc;
    st->domid = d->domid;
    st->type = d->type;
    st->paging = d->paging;
    st->nr_vcpus = d->nr_vcpus;
    st->node_affinity = d->node_affinity;
    st->dying = mv__domain_dying(d);
    st->pages = atomic_load_explicit(&d->pages, memory_order_relaxed);
    st->max_pages = atomic_load_explicit(&d->max_pages, memory_order_relaxed);
    st->overhead_pages = atomic_load_explicit(&d->overhead_pages, memory_order_relaxed);
    st->overhead_bytes = atomic_load_explicit(&d->overhead_bytes, memory_order_relaxed);
    st->ballooned_pages = atomic_load_explicit(&d->ballooned_pages, memory_order_relaxed);
    st->shared_pages = atomic_load_explicit(&d->shared_pages, memory_order_relaxed);
    return 0;
}

/* ---- Frames a domain owns ----------------------------------------------------------- */

int mv__domain_alloc(mv_domain_t *d, unsigned order, uint32_t node, uint32_t flags,
                     mv_mfn_t *out)
{
    if (order > MV_MAX_ORDER)
        return MV_EINVAL;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    uint64_t n = 1ull << order;
    /* Charge first, so that two racing allocations cannot both pass the maximum. */
    uint64_t pages = atomic_load_explicit(&d->pages, memory_order_relaxed);
    do {
        if (pages + n > atomic_load_explicit(&d->max_pages, memory_order_relaxed))
            return MV_ENOSPC;
    } while (!atomic_compare_exchange_weak_explicit(&d->pages, &pages, pages + n,
                                                    memory_order_acq_rel, memory_order_relaxed));
    if (node == MV_NODE_ANY)
        node = d->node_affinity;
    mv_mfn_t mfn;
    int rc = mv__heap_alloc(d->h, order, node, flags, d->domid, &mfn);
    if (rc) {
        atomic_fetch_sub_explicit(&d->pages, n, memory_order_acq_rel);
        return rc;
    }
    /* Each frame is its own block, freed on its own when its last reference goes. */
    for (uint64_t i = 0; i < n; i++) {
        struct mv_frame *f = mv__frame(d->h, mfn + i);
        atomic_store_explicit(&f->flags, mv__pgf_head(0) | MV_PGF_ALLOCATED,
                              memory_order_relaxed);
        atomic_store_explicit(&f->count, 1, memory_order_release);
    }
    /* Destroy may have started meanwhile: give the frames back rather than leak them. */
    if (mv__domain_dying(d)) {
        for (uint64_t i = 0; i < n; i++)
            mv__drop_allocation(d->h, mv__frame(d->h, mfn + i));
        return MV_ESRCH;
    }
    *out = mfn;
    return 0;
}

MV_API int mv_domain_alloc_frames(mv_domain_t *d, unsigned order, uint32_t node, uint32_t flags,
                                  mv_mfn_t *out)
{
    if (!d || !out || (flags & ~MV_ALLOC_ZERO))
        return MV_EINVAL;
    if (node != MV_NODE_ANY && node >= d->h->nr_nodes)
        return MV_ENODEV;
    return mv__domain_alloc(d, order, node, flags, out);
}

MV_API int mv_domain_free_frames(mv_domain_t *d, mv_mfn_t mfn, unsigned order)
{
    if (!d || order > MV_MAX_ORDER)
        return MV_EINVAL;
    if (mfn & ((1ull << order) - 1))
        return MV_EINVAL;
    uint64_t n = 1ull << order;
    /* Check every frame before changing any. */
    for (uint64_t i = 0; i < n; i++) {
        struct mv_frame *f;
        int rc = mv__domain_frame(d, mfn + i, &f);
        if (rc)
            return rc;
        if (!(atomic_load_explicit(&f->flags, memory_order_relaxed) & MV_PGF_ALLOCATED))
            return MV_EALREADY;
        /* Mapped in the p2m: the entry holds the allocation reference. */
        if (atomic_load_explicit(&f->link, memory_order_acquire) != MV_INVALID_GFN)
            return MV_EBUSY;
    }
    for (uint64_t i = 0; i < n; i++)
        mv__drop_allocation(d->h, mv__frame(d->h, mfn + i));
    return 0;
}

/* ---- Destruction -------------------------------------------------------------------- */

/* Drop the allocation reference of every frame d owns, from the cursor on, within budget. */
static int relinquish_frames(mv_domain_t *d)
{
    mv_host_t *h = d->h;
    uint64_t budget = TEARDOWN_SCAN_BUDGET;
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        mv_mfn_t end = n->first_mfn + n->nr_frames;
        if (d->frame_cursor < n->first_mfn)
            d->frame_cursor = n->first_mfn;
        while (d->frame_cursor < end) {
            if (!budget--)
                return MV_EAGAIN;
            struct mv_frame *f = &n->ft[d->frame_cursor - n->first_mfn];
            d->frame_cursor++;
            if (mv__frame_owner(f) == d->domid)
                mv__drop_allocation(h, f);
        }
    }
    return 0;
}

MV_API int mv_domain_destroy(mv_domain_t *d)
{
    if (!d)
        return MV_EINVAL;
    mv_host_t *h = d->h;
    int rc = 0;
    /*
     * One caller at a time continues the teardown; another gets MV_EAGAIN and calls again.
     * This is a claim, not a spinlock: the teardown frees frames, which decommits memory
     * through the platform, and no engine lock may be held across that.
     */
    if (atomic_exchange_explicit(&d->teardown_busy, true, memory_order_acquire))
        return MV_EAGAIN;
    if (d->phase == MV_TD_LIVE) {
        atomic_store_explicit(&d->dying, true, memory_order_release);
        d->phase = MV_TD_MODULES;
        d->module_cursor = MV_MOD_NR;
    }
    while (d->phase == MV_TD_MODULES && d->module_cursor > 0) {
        const struct mv_module_ops *ops = h->modules[d->module_cursor - 1];
        if (ops && ops->domain_teardown && (rc = ops->domain_teardown(d)))
            goto out;
        d->module_cursor--;
    }
    if (d->phase == MV_TD_MODULES) {
        d->phase = MV_TD_FRAMES;
        d->frame_cursor = 0;
    }
    if (d->phase == MV_TD_FRAMES) {
        if ((rc = relinquish_frames(d)))
            goto out;
        if (atomic_load_explicit(&d->pages, memory_order_acquire)) {
            rc = MV_EBUSY; /* outside references still hold frames; rescan next time */
            d->frame_cursor = 0;
            goto out;
        }
        d->phase = MV_TD_DONE;
    }
out:
    atomic_store_explicit(&d->teardown_busy, false, memory_order_release);
    if (rc)
        return rc;
    mv_rw_write_lock(&h->domtable_lock);
    atomic_store_explicit(&h->domains[d->domid], NULL, memory_order_release);
    h->nr_domains--;
    mv_rw_write_unlock(&h->domtable_lock);
    for (int m = MV_MOD_NR; m-- > 0;)
        if (h->modules[m] && h->modules[m]->domain_free)
            h->modules[m]->domain_free(d);
    domain_free_struct(d);
    return 0;
}

/* ---- vCPUs ---------------------------------------------------------------------------- */

MV_API mv_vcpu_t *mv_domain_vcpu(mv_domain_t *d, uint32_t idx)
{
    return d && idx < d->nr_vcpus ? d->vcpu[idx] : NULL;
}

MV_API uint32_t mv_vcpu_id(const mv_vcpu_t *v)
{
    return v ? v->id : UINT32_MAX;
}

MV_API mv_domain_t *mv_vcpu_domain(const mv_vcpu_t *v)
{
    return v ? v->d : NULL;
}

MV_API int mv_vcpu_get_state(const mv_vcpu_t *v, struct mv_vcpu_state *st)
{
    if (!v)
        return MV_EINVAL;
    int rc = mv__prepare_out(st, sizeof(*st));
    if (rc)
        return rc;
    memcpy((unsigned char *)st + sizeof(st->size), (const unsigned char *)&v->state +
           sizeof(st->size), sizeof(*st) - sizeof(st->size));
    return 0;
}

MV_API int mv_vcpu_set_state(mv_vcpu_t *v, const struct mv_vcpu_state *ust)
{
    struct mv_vcpu_state st;
    if (!v)
        return MV_EINVAL;
    int rc = mv__copy_sized(&st, sizeof(st), ust, sizeof(st));
    if (rc)
        return rc;
    if (mv__domain_dying(v->d))
        return MV_ESRCH;
    if (st.flags & ~MV_VCPUF_GBPAGES)
        return MV_EINVAL;
    /* CR3 bits 12..phys_bits-1 name the root; higher bits are reserved (PCID bit 63 aside). */
    uint64_t addr = st.cr3 & ~(1ull << 63);
    if (addr >> v->d->phys_bits)
        return MV_EINVAL;
    v->state = st;
    /* HVM: the guest's CR3. A PV vCPU's base pointers move only through the PV ops. */
    if (v->d->type == MV_DOMAIN_HVM)
        v->guest_table = st.cr3 & ~0xfffull & ~(1ull << 63);
    return 0;
}

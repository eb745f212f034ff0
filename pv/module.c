/*
 * pv/module.c - the PV module in the domain lifecycle and the audit.
 *
 * Init gives every PV domain its state (one metadata block: the domain part and one
 * pv_vcpu per vCPU). Teardown, with the domain dying (no reference can be taken any more),
 * settles each vCPU's continuation, drops its base pointers, then unpins every pinned frame
 * the domain owns, scanning the frame table from a cursor; every step spends the budget and
 * MV_EAGAIN brings it back where it stopped. With no root left, no table is validated.
 *
 * The audit: recount adds what PV holds (entries of validated and partial tables, pins,
 * base pointers, continuations) to the per-frame recount, so I3/I4 are exact; audit checks
 * I5-I8 over every table of a PV domain and the module's own bookkeeping.
 */
#include "pv-internal.h"

static size_t pv_bytes(uint32_t nr_vcpus)
{
    return sizeof(struct pv_domain) + nr_vcpus * sizeof(struct pv_vcpu);
}

static int pv_domain_init(mv_domain_t *d)
{
    if (d->type != MV_DOMAIN_PV)
        return 0;
    struct pv_domain *pd = mv__meta_alloc(d->h, pv_bytes(d->nr_vcpus));
    if (!pd)
        return MV_ENOMEM;
    mv_spin_init(&pd->lock, MV_LOCK_RANK_PV);
    pd->budget = MV_PV_DEFAULT_BUDGET;
    for (uint32_t i = 0; i < d->nr_vcpus; i++) {
        pd->vcpu[i] = (struct pv_vcpu){.kbase = MV_INVALID_MFN, .ubase = MV_INVALID_MFN,
                                       .pend_mfn = MV_INVALID_MFN};
        d->vcpu[i]->mod[MV_MOD_PV] = &pd->vcpu[i];
        d->vcpu[i]->guest_table = MV_INVALID_MFN;
        d->vcpu[i]->guest_table_user = MV_INVALID_MFN;
    }
    d->mod[MV_MOD_PV] = pd;
    atomic_fetch_add_explicit(&d->overhead_bytes, pv_bytes(d->nr_vcpus), memory_order_relaxed);
    return 0;
}

static void pv_domain_free(mv_domain_t *d)
{
    struct pv_domain *pd = pv_dom(d);
    if (!pd)
        return;
    for (uint32_t i = 0; i < d->nr_vcpus; i++)
        d->vcpu[i]->mod[MV_MOD_PV] = NULL;
    d->mod[MV_MOD_PV] = NULL;
    atomic_fetch_sub_explicit(&d->overhead_bytes, pv_bytes(d->nr_vcpus), memory_order_relaxed);
    mv__meta_free(d->h, pd, pv_bytes(d->nr_vcpus));
}

enum { TD_VCPUS = 0, TD_PINS = 1, TD_DONE = 2 };

/* Drop one base pointer of a vCPU. */
static int drop_base(struct pv_ctx *c, bool user)
{
    mv_mfn_t *slot = user ? &c->pv->ubase : &c->pv->kbase;
    mv_mfn_t m = *slot;
    if (m == MV_INVALID_MFN)
        return 0;
    *slot = MV_INVALID_MFN;
    if (user)
        c->v->guest_table_user = MV_INVALID_MFN;
    else
        c->v->guest_table = MV_INVALID_MFN;
    return mv__pv_put_root(c, m);
}

static int teardown_pins(struct pv_ctx *c)
{
    struct pv_domain *pd = c->pd;
    mv_host_t *h = c->h;
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        mv_mfn_t end = n->first_mfn + n->nr_frames;
        if (pd->td_cursor < n->first_mfn)
            pd->td_cursor = n->first_mfn;
        while (pd->td_cursor < end) {
            if (!c->budget || pd->nr_deferred + PV_DEFER_RESERVE > PV_DEFER_MAX)
                return PV_YIELD;
            c->budget--;
            mv_mfn_t m = pd->td_cursor;
            struct mv_frame *f = &n->ft[m - n->first_mfn];
            if (mv__frame_owner(f) != c->d->domid || !(pv_type_word(f) & MV_PGT_PINNED)) {
                pd->td_cursor++;
                continue;
            }
            atomic_fetch_and_explicit(&f->type_info, ~MV_PGT_PINNED, memory_order_acq_rel);
            pd->pinned--;
            pd->td_cursor++;
            int rc = mv__pv_put_root(c, m);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int pv_domain_teardown(mv_domain_t *d)
{
    struct pv_domain *pd = pv_dom(d);
    if (!pd || pd->td_phase == TD_DONE)
        return 0;
    struct pv_ctx c;
    mv__pv_ctx_init(&c, d->vcpu[0]);
    mv_spin_lock(&pd->lock);
    int rc = 0;
    while (pd->td_phase == TD_VCPUS && pd->td_vcpu < d->nr_vcpus) {
        if (pd->nr_deferred + PV_DEFER_RESERVE > PV_DEFER_MAX) {
            rc = PV_YIELD;
            goto out;
        }
        c.v = d->vcpu[pd->td_vcpu];
        c.pv = c.v->mod[MV_MOD_PV];
        if ((rc = mv__pv_settle(&c, MV_INVALID_MFN, 0)) || (rc = drop_base(&c, false)) ||
            (rc = drop_base(&c, true)))
            goto out;
        pd->td_vcpu++;
    }
    if (pd->td_phase == TD_VCPUS) {
        pd->td_phase = TD_PINS;
        pd->td_cursor = 0;
    }
    c.v = d->vcpu[0];
    c.pv = c.v->mod[MV_MOD_PV];
    if ((rc = mv__pv_settle(&c, MV_INVALID_MFN, 0)) || (rc = teardown_pins(&c)) ||
        (rc = mv__pv_settle(&c, MV_INVALID_MFN, 0)))
        goto out;
    pd->td_phase = TD_DONE;
out:
    if (rc)
        pd->preemptions++;
    {
        struct mv_frame *q[PV_DEFER_MAX];
        uint32_t n = pd->nr_deferred;
        memcpy(q, pd->deferred, n * sizeof(q[0]));
        pd->nr_deferred = 0;
        mv_spin_unlock(&pd->lock);
        for (uint32_t i = 0; i < n; i++)
            mv__put_page(d->h, q[i]);
    }
    return rc ? MV_EAGAIN : 0;
}

/* ---- Audit ------------------------------------------------------------------------------- */

/* The domain whose PV table f is, or NULL. */
static mv_domain_t *pv_owner(mv_host_t *h, struct mv_frame *f)
{
    mv_domain_t *d = mv__domain_of_owner(h, mv__frame_owner(f));
    return d && pv_dom(d) ? d : NULL;
}

/* How many leading entries hold references: all of a validated table, nval (+1) of a partial. */
static unsigned held_entries(uint64_t x)
{
    if (x & MV_PGT_VALIDATED)
        return MV_PV_ENTRIES;
    if (x & MV_PGT_PARTIAL)
        return pv_nval(x) + ((x & PV_PEND) ? 1 : 0);
    return 0;
}

static void add_ref(mv_host_t *h, struct mv_audit_ctx *ac, mv_mfn_t m, bool typed)
{
    uint64_t idx = mv__audit_frame_index(h, m);
    if (idx == UINT64_MAX)
        return; /* reported by the audit hook */
    ac->refs[idx]++;
    if (typed)
        ac->types[idx]++;
}

static void recount_table(mv_host_t *h, struct mv_audit_ctx *ac, mv_mfn_t m, uint64_t x)
{
    unsigned level = mv__pgt_type(x), n = held_entries(x);
    const uint64_t *tab = mv__pv_table(h, m);
    if (x & MV_PGT_PINNED)
        add_ref(h, ac, m, true);
    for (unsigned i = 0; i < n; i++) {
        uint64_t e = tab[i];
        if (!(e & MV_PTE_P))
            continue;
        mv_mfn_t t = pv_pte_mfn(e);
        if (level == 1)
            add_ref(h, ac, t, (e & MV_PTE_RW) != 0);
        else if (t != m)
            add_ref(h, ac, t, true);
    }
}

static void pv_recount(mv_host_t *h, struct mv_audit_ctx *ac)
{
    for (uint32_t id = 0; id <= MV_DOMID_MAX; id++) {
        mv_domain_t *d = mv__domain_of_owner(h, id);
        if (!d || !pv_dom(d))
            continue;
        struct pv_domain *pd = pv_dom(d);
        for (uint32_t i = 0; i < d->nr_vcpus; i++) {
            const struct pv_vcpu *pv = &pd->vcpu[i];
            if (pv->kbase != MV_INVALID_MFN)
                add_ref(h, ac, pv->kbase, true);
            if (pv->ubase != MV_INVALID_MFN)
                add_ref(h, ac, pv->ubase, true);
            if (pv->pend != PV_PEND_NONE)
                add_ref(h, ac, pv->pend_mfn, true);
        }
    }
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        for (uint64_t j = 0; j < n->nr_frames; j++) {
            struct mv_frame *f = &n->ft[j];
            uint64_t x = pv_type_word(f);
            if (!mv__pgt_is_table(mv__pgt_type(x)) || !(x & MV_PGT_COUNT_MASK) ||
                !pv_owner(h, f))
                continue;
            recount_table(h, ac, n->first_mfn + j, x);
        }
    }
}

#define REPORT(ac, inv, what, m, d, e, f) mv__audit_report(ac, inv, what, m, (d)->domid, e, f)

/* I5/I6 for one held entry. lin[] counts linear use per linear-table slot. */
static void audit_entry(mv_host_t *h, struct mv_audit_ctx *ac, mv_domain_t *d, mv_mfn_t m,
                        unsigned level, unsigned i, uint64_t e, bool pend_entry,
                        int32_t *lin)
{
    struct pv_vcpu dummy = {.pend = PV_PEND_NONE};
    struct pv_ctx c = {.h = h, .d = d, .pd = pv_dom(d), .pv = &dummy};
    c.resv_mask = MV_PTE_ADDR_MASK & ~((1ull << d->phys_bits) - 1);
    if (mv__pv_check_bits(&c, level, i, e))
        REPORT(ac, "I5", "entry-bits", m, d, i, e);
    if (!(e & MV_PTE_P))
        return;
    mv_mfn_t t = pv_pte_mfn(e);
    struct mv_frame *tf = mv__frame(h, t);
    if (!tf) {
        REPORT(ac, "I5", "entry-target-missing", m, d, i, t);
        return;
    }
    if (mv__frame_owner(tf) != d->domid) {
        REPORT(ac, "I5", "entry-target-foreign", m, d, d->domid, mv__frame_owner(tf));
        return;
    }
    uint64_t tx = pv_type_word(tf);
    unsigned tt = mv__pgt_type(tx);
    if (level == 1) {
        if ((e & MV_PTE_RW) && (tt != MV_PGT_WRITABLE || !(tx & MV_PGT_COUNT_MASK)))
            REPORT(ac, "I5", "writable-entry-not-writable", m, d, MV_PGT_WRITABLE, tt);
        return;
    }
    bool self = t == m;
    if (self || tt == level) {
        if (!(d->flags & MV_DOMF_LINEAR_PT))
            REPORT(ac, "I5", "linear-entry-disallowed", m, d, 0, i);
        if (e & MV_PTE_RW)
            REPORT(ac, "I6", "linear-entry-writable", m, d, 0, e);
        if (self)
            return;
        if (!(tx & MV_PGT_VALIDATED))
            REPORT(ac, "I5", "linear-target-unvalidated", t, d, 1, 0);
        struct pv_domain *pd = pv_dom(d);
        struct pv_linear *lt = mv__pv_linear_find(pd, m), *lx = mv__pv_linear_find(pd, t);
        if (!lt || !lx) {
            REPORT(ac, "I6", "linear-untracked", m, d, t, 0);
            return;
        }
        lin[lt - pd->linear]--;
        lin[lx - pd->linear]++;
        return;
    }
    if (tt != level - 1)
        REPORT(ac, "I5", "entry-target-level", t, d, level - 1, tt);
    else if (pend_entry ? !(tx & MV_PGT_PARTIAL) : !(tx & MV_PGT_VALIDATED))
        REPORT(ac, "I5", "entry-target-unvalidated", t, d, 1, tx >> 32);
}

static void audit_table(mv_host_t *h, struct mv_audit_ctx *ac, mv_domain_t *d, mv_mfn_t m,
                        uint64_t x, uint64_t *by_level, uint64_t *pinned, uint64_t *partial,
                        int32_t *lin)
{
    unsigned level = mv__pgt_type(x);
    bool validated = (x & MV_PGT_VALIDATED) != 0, part = (x & MV_PGT_PARTIAL) != 0;
    if (validated && part)
        REPORT(ac, "I8", "validated-and-partial", m, d, 0, x >> 32);
    if (!validated && !part)
        REPORT(ac, "I8", "table-typed-unvalidated", m, d, 1, 0);
    if (validated && (x & (PV_NVAL_MASK | PV_PEND)))
        REPORT(ac, "I8", "validated-with-progress", m, d, 0, x >> 32);
    if (part && pv_nval(x) > MV_PV_ENTRIES - ((x & PV_PEND) ? 1 : 0))
        REPORT(ac, "I8", "partial-progress-range", m, d, MV_PV_ENTRIES, pv_nval(x));
    if ((x & MV_PGT_PINNED) && !validated)
        REPORT(ac, "I7", "pinned-not-validated", m, d, 1, 0);
    if (validated)
        by_level[level - 1]++;
    else
        (*partial)++;
    if (x & MV_PGT_PINNED)
        (*pinned)++;
    const uint64_t *tab = mv__pv_table(h, m);
    unsigned n = held_entries(x);
    if (n > MV_PV_ENTRIES)
        n = MV_PV_ENTRIES;
    for (unsigned i = 0; i < n; i++)
        audit_entry(h, ac, d, m, level, i, tab[i], part && (x & PV_PEND) && i == n - 1, lin);
    if (part && (x & PV_PEND) && n && (tab[n - 1] & MV_PTE_P)) {
        struct mv_frame *cf = mv__frame(h, pv_pte_mfn(tab[n - 1]));
        if (cf && (pv_type_word(cf) & MV_PGT_COUNT_MASK) != 1)
            REPORT(ac, "I8", "partial-child-shared", pv_pte_mfn(tab[n - 1]), d, 1,
                   pv_type_word(cf) & MV_PGT_COUNT_MASK);
    }
}

static void audit_roots(mv_host_t *h, struct mv_audit_ctx *ac, mv_domain_t *d)
{
    struct pv_domain *pd = pv_dom(d);
    for (uint32_t i = 0; i < d->nr_vcpus; i++) {
        const struct pv_vcpu *pv = &pd->vcpu[i];
        mv_mfn_t bases[2] = {pv->kbase, pv->ubase};
        for (unsigned b = 0; b < 2; b++) {
            if (bases[b] == MV_INVALID_MFN)
                continue;
            struct mv_frame *f = mv__frame(h, bases[b]);
            uint64_t x = f ? pv_type_word(f) : 0;
            if (!f || mv__frame_owner(f) != d->domid || mv__pgt_type(x) != MV_PGT_L4 ||
                !(x & MV_PGT_VALIDATED))
                REPORT(ac, "I5", "baseptr-not-validated-l4", bases[b], d, MV_PGT_L4,
                       mv__pgt_type(x));
        }
        if (pv->pend != PV_PEND_NONE) {
            struct mv_frame *f = mv__frame(h, pv->pend_mfn);
            if (!f || !(pv_type_word(f) & MV_PGT_PARTIAL))
                REPORT(ac, "I8", "continuation-root-not-partial", pv->pend_mfn, d, 1, 0);
        }
    }
    if (pd->nr_deferred)
        REPORT(ac, "I3", "pv-deferred-puts-left", MV_INVALID_MFN, d, 0, pd->nr_deferred);
}

static void pv_audit(mv_host_t *h, struct mv_audit_ctx *ac)
{
    for (uint32_t id = 0; id <= MV_DOMID_MAX; id++) {
        mv_domain_t *d = mv__domain_of_owner(h, id);
        if (!d || !pv_dom(d))
            continue;
        struct pv_domain *pd = pv_dom(d);
        uint64_t by_level[4] = {0}, pinned = 0, partial = 0;
        int32_t lin[MV_PV_LINEAR_TABLES] = {0};
        audit_roots(h, ac, d);
        for (uint32_t i = 0; i < h->nr_nodes; i++) {
            struct mv_heap_node *n = h->node[i];
            for (uint64_t j = 0; j < n->nr_frames; j++) {
                struct mv_frame *f = &n->ft[j];
                uint64_t x = pv_type_word(f);
                if (mv__frame_owner(f) != id || !mv__pgt_is_table(mv__pgt_type(x)) ||
                    !(x & MV_PGT_COUNT_MASK))
                    continue;
                audit_table(h, ac, d, n->first_mfn + j, x, by_level, &pinned, &partial, lin);
            }
        }
        for (unsigned l = 0; l < 4; l++)
            if (by_level[l] != pd->tables[l])
                REPORT(ac, "I5", "pv-stats-tables", MV_INVALID_MFN, d, by_level[l],
                       pd->tables[l]);
        if (pinned != pd->pinned)
            REPORT(ac, "I7", "pv-stats-pinned", MV_INVALID_MFN, d, pinned, pd->pinned);
        if (partial != pd->partial)
            REPORT(ac, "I8", "pv-stats-partial", MV_INVALID_MFN, d, partial, pd->partial);
        /* I6: the linear table matches the entries, and no table is on both sides. */
        for (uint32_t k = 0; k < pd->nr_linear; k++)
            if (lin[k] != pd->linear[k].count)
                REPORT(ac, "I6", "linear-count", pd->linear[k].mfn, d,
                       (uint64_t)(int64_t)lin[k], (uint64_t)(int64_t)pd->linear[k].count);
    }
}

const struct mv_module_ops mv__pv_module = {
    .name = "pv",
    .domain_init = pv_domain_init,
    .domain_teardown = pv_domain_teardown,
    .domain_free = pv_domain_free,
    .recount = pv_recount,
    .audit = pv_audit,
};

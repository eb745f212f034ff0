/*
 * pv/validate.c - validating and devalidating PV page tables.
 *
 * What an entry holds (Xen's model): a present L1 entry a general reference on the frame
 * it maps, plus a writable-type reference when RW is set; a present L2/L3/L4 entry a
 * general and a typed reference of the next level down on the table it points at, or, for
 * a linear entry, of its own level; an entry that points at its own table holds nothing.
 *
 * Validation of a tree is a depth-first walk with an explicit path (never recursion on
 * guest data), resumable from the frames alone: a partial table's type word says how many
 * entries hold their references (nval) and whether entry nval holds one on a partial child
 * (PV_PEND), the next frame down the path. Release (devalidation) walks the same way,
 * from the last entry towards the first; a table whose last type reference an entry held
 * is released before that reference is dropped. Both spend the call's budget one entry at
 * a time and return PV_YIELD when it is gone; the root of the interrupted walk stays on
 * the vCPU (pv_vcpu.pend) with a general and a typed reference.
 *
 * An error half-way through a validation releases everything the walk took, the same way
 * (with a fresh budget; what does not fit is left on the vCPU and finished first thing in
 * its next call). Every function here runs under the domain's PV lock.
 */
#include "pv-internal.h"

#define PV_NEED_VALIDATE 3 /* take_entry: a fresh table type was taken; validate it */
#define PV_NEED_RELEASE 4  /* drop_entry: the entry holds the last type reference of a table */
#define PV_WALK_MAX 12     /* 4 levels and a linear hop at three of them, with room */

void mv__pv_ctx_init(struct pv_ctx *c, mv_vcpu_t *v)
{
    c->v = v;
    c->d = v->d;
    c->h = c->d->h;
    c->pd = pv_dom(c->d);
    c->pv = v->mod[MV_MOD_PV];
    c->budget = c->pd->budget;
    unsigned w = c->d->phys_bits;
    c->resv_mask = MV_PTE_ADDR_MASK & ~((1ull << w) - 1);
    c->reason = MV_PV_REFUSE_OTHER;
}

static int refuse(struct pv_ctx *c, int reason, int err)
{
    c->reason = reason;
    return err;
}

static bool room_low(const struct pv_ctx *c)
{
    return c->pd->nr_deferred + PV_DEFER_RESERVE > PV_DEFER_MAX;
}

static uint64_t load_entry(const uint64_t *tab, unsigned i)
{
    return __atomic_load_n(&tab[i], __ATOMIC_RELAXED);
}

/* ---- References ------------------------------------------------------------------------- */

/* Drop a general reference whose removal the caller has stamped already. */
static void put_ref_stamped(struct pv_ctx *c, struct mv_frame *f)
{
    uint32_t x = atomic_load_explicit(&f->count, memory_order_relaxed);
    while (x > 1)
        if (atomic_compare_exchange_weak_explicit(&f->count, &x, x - 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return;
    /* Possibly the last: freeing goes through the heap, so it waits for the unlock. */
    MV_ASSERT(c->pd->nr_deferred < PV_DEFER_MAX);
    c->pd->deferred[c->pd->nr_deferred++] = f;
}

void mv__pv_put_ref(struct pv_ctx *c, struct mv_frame *f)
{
    /* Stamp first: the mapping is gone from now on (as mm's put does). */
    mv__flush_stamp(c->h, f, false);
    put_ref_stamped(c, f);
}

static int get_ref(struct pv_ctx *c, struct mv_frame *f)
{
    int rc = mv__get_page(c->d, f);
    if (!rc)
        return 0;
    return refuse(c, rc == MV_EOVERFLOW ? MV_PV_REFUSE_OVERFLOW
                     : rc == MV_ESRCH   ? MV_PV_REFUSE_OTHER
                                        : MV_PV_REFUSE_OWNER, rc);
}

static int type_error(struct pv_ctx *c, int rc)
{
    if (rc == MV_EOVERFLOW)
        return refuse(c, MV_PV_REFUSE_OVERFLOW, rc);
    /* MV_EAGAIN from mm: the frame is partly validated by another walk. */
    return refuse(c, MV_PV_REFUSE_TYPE, MV_EBUSY);
}

/* ---- Entry bits --------------------------------------------------------------------------- */

int mv__pv_check_bits(struct pv_ctx *c, unsigned level, unsigned slot, uint64_t e)
{
    if (level == 4 && pv_l4_reserved_slot(slot) && e)
        return refuse(c, MV_PV_REFUSE_FLAGS, MV_EPERM);
    if (!(e & MV_PTE_P)) {
        mv_mfn_t m = pv_pte_mfn(e);
        if (m && m < c->h->end_mfn)
            return refuse(c, MV_PV_REFUSE_NOT_PRESENT, MV_EFAULT);
        return 0;
    }
    if (e & c->resv_mask)
        return refuse(c, MV_PV_REFUSE_RESERVED, MV_ERANGE);
    if (e & PV_PTE_HIGH_AVAIL)
        return refuse(c, MV_PV_REFUSE_FLAGS, MV_EINVAL);
    if (level == 1)
        return 0;
    if ((level == 2 || level == 3) && (e & MV_PTE_PS))
        return refuse(c, MV_PV_REFUSE_SUPERPAGE, MV_EOPNOTSUPP);
    if (e & (MV_PTE_PWT | MV_PTE_PCD | MV_PTE_G | MV_PTE_PS))
        return refuse(c, MV_PV_REFUSE_FLAGS, MV_EINVAL);
    return 0;
}

/* ---- Linear entries (XSA-182, XSA-240) --------------------------------------------------- */

struct pv_linear *mv__pv_linear_find(struct pv_domain *pd, mv_mfn_t mfn)
{
    for (uint32_t i = 0; i < pd->nr_linear; i++)
        if (pd->linear[i].mfn == mfn)
            return &pd->linear[i];
    return NULL;
}

static int linear_rules(struct pv_ctx *c, uint64_t e)
{
    if (!(c->d->flags & MV_DOMF_LINEAR_PT))
        return refuse(c, MV_PV_REFUSE_LINEAR, MV_EPERM);
    if (e & MV_PTE_RW)
        return refuse(c, MV_PV_REFUSE_LINEAR, MV_EACCES);
    return 0;
}

/* tbl gains a linear entry to t: neither may already be on the other side. */
static int linear_take(struct pv_ctx *c, mv_mfn_t tbl, mv_mfn_t t)
{
    struct pv_domain *pd = c->pd;
    struct pv_linear *lt = mv__pv_linear_find(pd, tbl), *lx = mv__pv_linear_find(pd, t);
    if ((lt && lt->count > 0) || (lx && lx->count < 0))
        return refuse(c, MV_PV_REFUSE_LINEAR, MV_EBUSY);
    if (pd->nr_linear + !lt + !lx > MV_PV_LINEAR_TABLES)
        return refuse(c, MV_PV_REFUSE_LINEAR, MV_ENOSPC);
    if ((lt && lt->count == INT32_MIN + 1) || (lx && lx->count == INT32_MAX))
        return refuse(c, MV_PV_REFUSE_OVERFLOW, MV_EOVERFLOW);
    if (!lt) {
        lt = &pd->linear[pd->nr_linear++];
        *lt = (struct pv_linear){.mfn = tbl};
    }
    if (!lx) {
        lx = &pd->linear[pd->nr_linear++];
        *lx = (struct pv_linear){.mfn = t};
    }
    lt->count--;
    lx->count++;
    return 0;
}

static void linear_forget(struct pv_domain *pd, mv_mfn_t mfn, int delta)
{
    struct pv_linear *l = mv__pv_linear_find(pd, mfn);
    MV_ASSERT(l);
    l->count += delta;
    if (!l->count)
        *l = pd->linear[--pd->nr_linear];
}

static void linear_drop(struct pv_ctx *c, mv_mfn_t tbl, mv_mfn_t t)
{
    linear_forget(c->pd, tbl, +1);
    linear_forget(c->pd, t, -1);
}

/* ---- Taking and dropping what one entry holds --------------------------------------------- */

/*
 * Take what entry e of table tbl (level `level`) needs. 0; PV_NEED_VALIDATE: *child got a
 * fresh table type (general and typed reference held) and must be validated; or an error
 * with nothing taken.
 */
static int take_entry(struct pv_ctx *c, mv_mfn_t tbl, unsigned level, uint64_t e,
                      mv_mfn_t *child)
{
    if (!(e & MV_PTE_P))
        return 0;
    mv_mfn_t t = pv_pte_mfn(e);
    struct mv_frame *tf = mv__frame(c->h, t);
    int rc;
    if (!tf)
        return refuse(c, MV_PV_REFUSE_OWNER, MV_ERANGE);
    if (level == 1) {
        if ((rc = get_ref(c, tf)))
            return rc;
        if (e & MV_PTE_RW) {
            rc = mv__get_page_type(c->h, tf, MV_PGT_WRITABLE);
            if (rc) {
                mv__pv_put_ref(c, tf);
                return type_error(c, rc);
            }
        }
        return 0;
    }
    if (t == tbl) /* a self-map: linear, holds nothing */
        return linear_rules(c, e);
    if ((rc = get_ref(c, tf)))
        return rc;
    uint64_t x = pv_type_word(tf);
    if (mv__pgt_type(x) == level && (x & MV_PGT_COUNT_MASK)) {
        /* A linear entry to another table of the same level. */
        if ((rc = linear_rules(c, e)))
            goto put;
        if (!(x & MV_PGT_VALIDATED)) {
            rc = refuse(c, MV_PV_REFUSE_TYPE, MV_EBUSY);
            goto put;
        }
        if ((rc = linear_take(c, tbl, t)))
            goto put;
        rc = mv__get_page_type(c->h, tf, level);
        if (rc) {
            if (rc == MV_PAGE_VALIDATE) /* dropped to zero meanwhile: not ours to validate */
                mv__put_page_type(c->h, tf);
            linear_drop(c, tbl, t);
            mv__pv_put_ref(c, tf);
            return type_error(c, rc == MV_PAGE_VALIDATE ? MV_EBUSY : rc);
        }
        return 0;
    }
    rc = mv__get_page_type(c->h, tf, level - 1);
    if (rc == 0)
        return 0;
    if (rc == MV_PAGE_VALIDATE) {
        *child = t;
        return PV_NEED_VALIDATE;
    }
    mv__pv_put_ref(c, tf);
    return type_error(c, rc);
put:
    mv__pv_put_ref(c, tf);
    return rc;
}

/*
 * Drop what entry e of table tbl holds; PV_NEED_RELEASE (nothing dropped, *child set) when
 * it holds the last type reference of a table, which must be released first.
 */
static int drop_entry(struct pv_ctx *c, mv_mfn_t tbl, unsigned level, uint64_t e,
                      mv_mfn_t *child)
{
    if (!(e & MV_PTE_P))
        return 0;
    mv_mfn_t t = pv_pte_mfn(e);
    struct mv_frame *tf = mv__frame(c->h, t);
    MV_ASSERT(tf);
    if (level == 1) {
        if (e & MV_PTE_RW) {
            mv__put_page_type(c->h, tf); /* stamps the removal */
            put_ref_stamped(c, tf);
        } else {
            mv__pv_put_ref(c, tf);
        }
        return 0;
    }
    if (t == tbl)
        return 0;
    uint64_t x = pv_type_word(tf);
    if ((x & MV_PGT_COUNT_MASK) == 1) {
        *child = t;
        return PV_NEED_RELEASE;
    }
    if (mv__pgt_type(x) == level)
        linear_drop(c, tbl, t);
    mv__put_page_type(c->h, tf);
    mv__pv_put_ref(c, tf);
    return 0;
}

/* A validated table whose last type reference is going: its entries are released first. */
static void begin_release(struct pv_ctx *c, struct mv_frame *f)
{
    uint64_t x = pv_type_word(f);
    if (x & MV_PGT_VALIDATED) {
        c->pd->tables[mv__pgt_type(x) - 1]--;
        c->pd->partial++;
        pv_set_state(f, pv_partial_state(MV_PV_ENTRIES, false));
    }
}

/* Its entries hold nothing any more: drop the holder's typed and general reference. */
static void end_release(struct pv_ctx *c, struct mv_frame *f)
{
    c->pd->partial--;
    c->pd->devalidations++;
    mv__put_page_type(c->h, f);
    mv__pv_put_ref(c, f);
}

/* ---- Walks ------------------------------------------------------------------------------ */

struct walk {
    unsigned n;
    mv_mfn_t mfn[PV_WALK_MAX];
    struct mv_frame *f[PV_WALK_MAX];
};

static void walk_push(struct walk *w, const mv_host_t *h, mv_mfn_t m)
{
    if (w->n == PV_WALK_MAX)
        MV_BUG("PV walk deeper than %u", PV_WALK_MAX);
    w->mfn[w->n] = m;
    w->f[w->n] = mv__frame(h, m);
    MV_ASSERT(w->f[w->n]);
    w->n++;
}

/* The path from root down along the PV_PEND entries, as the frames record it. */
static void walk_resume(struct pv_ctx *c, struct walk *w, mv_mfn_t root)
{
    w->n = 0;
    walk_push(w, c->h, root);
    for (;;) {
        uint64_t x = pv_type_word(w->f[w->n - 1]);
        if (!(x & PV_PEND))
            return;
        const uint64_t *tab = mv__pv_table(c->h, w->mfn[w->n - 1]);
        walk_push(w, c->h, pv_pte_mfn(load_entry(tab, pv_nval(x))));
    }
}

/* Validate the partial tree at root. 0 validated, PV_YIELD, or an error (state consistent). */
static int validate_run(struct pv_ctx *c, mv_mfn_t root)
{
    struct walk w;
    walk_resume(c, &w, root);
    for (;;) {
        mv_mfn_t fm = w.mfn[w.n - 1];
        struct mv_frame *f = w.f[w.n - 1];
        uint64_t x = pv_type_word(f);
        unsigned level = mv__pgt_type(x), k = pv_nval(x);
        const uint64_t *tab = mv__pv_table(c->h, fm);
        mv_mfn_t child = MV_INVALID_MFN;
        int rc = 0;
        for (; k < MV_PV_ENTRIES; k++) {
            if (!c->budget || room_low(c)) {
                pv_set_state(f, pv_partial_state(k, false));
                return PV_YIELD;
            }
            c->budget--;
            uint64_t e = load_entry(tab, k);
            if ((rc = mv__pv_check_bits(c, level, k, e)) ||
                (rc = take_entry(c, fm, level, e, &child)) < 0) {
                pv_set_state(f, pv_partial_state(k, false));
                return rc;
            }
            if (rc == PV_NEED_VALIDATE)
                break;
        }
        if (rc == PV_NEED_VALIDATE) {
            pv_set_state(f, pv_partial_state(k, true));
            struct mv_frame *cf = mv__frame(c->h, child);
            pv_set_state(cf, pv_partial_state(0, false));
            c->pd->partial++;
            walk_push(&w, c->h, child);
            continue;
        }
        pv_set_state(f, MV_PGT_VALIDATED);
        c->pd->partial--;
        c->pd->tables[level - 1]++;
        c->pd->validations++;
        if (--w.n == 0)
            return 0;
        struct mv_frame *p = w.f[w.n - 1];
        pv_set_state(p, pv_partial_state(pv_nval(pv_type_word(p)) + 1, false));
    }
}

/* Release everything the partial tree at root holds. 0 (root holds nothing) or PV_YIELD. */
static int release_run(struct pv_ctx *c, mv_mfn_t root)
{
    struct walk w;
    walk_resume(c, &w, root);
    for (;;) {
        mv_mfn_t fm = w.mfn[w.n - 1];
        struct mv_frame *f = w.f[w.n - 1];
        uint64_t x = pv_type_word(f);
        unsigned level = mv__pgt_type(x), k = pv_nval(x);
        const uint64_t *tab = mv__pv_table(c->h, fm);
        mv_mfn_t child = MV_INVALID_MFN;
        int rc = 0;
        for (; k > 0; k--) {
            if (!c->budget || room_low(c)) {
                pv_set_state(f, pv_partial_state(k, false));
                return PV_YIELD;
            }
            c->budget--;
            if ((rc = drop_entry(c, fm, level, load_entry(tab, k - 1), &child)))
                break;
        }
        if (rc == PV_NEED_RELEASE) {
            pv_set_state(f, pv_partial_state(k - 1, true));
            begin_release(c, mv__frame(c->h, child));
            walk_push(&w, c->h, child);
            continue;
        }
        pv_set_state(f, pv_partial_state(0, false));
        if (--w.n == 0)
            return 0;
        /* The parent's pending entry held f's last type reference. */
        mv_mfn_t pm = w.mfn[w.n - 1];
        struct mv_frame *p = w.f[w.n - 1];
        uint64_t px = pv_type_word(p);
        if (mv__pgt_type(px) == level)
            linear_drop(c, pm, fm);
        end_release(c, f);
        pv_set_state(p, pv_partial_state(pv_nval(px), false));
    }
}

/* ---- Roots -------------------------------------------------------------------------------- */

/* Release the tree at mfn (partial, one typed reference left) and drop that reference. */
static int finish_release(struct pv_ctx *c, mv_mfn_t mfn)
{
    if (release_run(c, mfn) == 0) {
        end_release(c, mv__frame(c->h, mfn));
        return 0;
    }
    MV_ASSERT(c->pv->pend == PV_PEND_NONE);
    c->pv->pend = PV_PEND_RELEASE;
    c->pv->pend_mfn = mfn;
    return PV_DONE_DEFERRED;
}

/* Validate the partial tree at mfn, whose root reference the caller holds. */
static int validate_root(struct pv_ctx *c, mv_mfn_t mfn)
{
    int rc = validate_run(c, mfn);
    if (rc == 0)
        return 0;
    if (rc == PV_YIELD) {
        c->pv->pend = PV_PEND_VALIDATE;
        c->pv->pend_mfn = mfn;
        return PV_YIELD;
    }
    /* Half-way error: give back every reference the walk took, with a budget of its own. */
    int reason = c->reason;
    uint64_t left = c->budget;
    if (c->budget < c->pd->budget)
        c->budget = c->pd->budget;
    finish_release(c, mfn);
    if (c->budget > left)
        c->budget = left;
    c->reason = reason;
    return rc;
}

int mv__pv_get_root(struct pv_ctx *c, mv_mfn_t mfn, unsigned level)
{
    struct mv_frame *f = mv__frame(c->h, mfn);
    int rc;
    if (!f)
        return refuse(c, MV_PV_REFUSE_OWNER, MV_ERANGE);
    if (c->pv->pend == PV_PEND_VALIDATE && c->pv->pend_mfn == mfn &&
        mv__pgt_type(pv_type_word(f)) == level) {
        /* The continuation of this vCPU's validation: its reference becomes ours. */
        c->pv->pend = PV_PEND_NONE;
        return validate_root(c, mfn);
    }
    if ((rc = get_ref(c, f)))
        return rc;
    rc = mv__get_page_type(c->h, f, level);
    if (rc == 0)
        return 0;
    if (rc != MV_PAGE_VALIDATE) {
        mv__pv_put_ref(c, f);
        return type_error(c, rc);
    }
    pv_set_state(f, pv_partial_state(0, false));
    c->pd->partial++;
    return validate_root(c, mfn);
}

int mv__pv_put_root(struct pv_ctx *c, mv_mfn_t mfn)
{
    struct mv_frame *f = mv__frame(c->h, mfn);
    MV_ASSERT(f);
    if ((pv_type_word(f) & MV_PGT_COUNT_MASK) > 1) {
        mv__put_page_type(c->h, f);
        mv__pv_put_ref(c, f);
        return 0;
    }
    begin_release(c, f);
    return finish_release(c, mfn);
}

int mv__pv_settle(struct pv_ctx *c, mv_mfn_t cont_mfn, unsigned cont_level)
{
    struct pv_vcpu *pv = c->pv;
    if (pv->pend == PV_PEND_NONE)
        return 0;
    struct mv_frame *f = mv__frame(c->h, pv->pend_mfn);
    if (pv->pend == PV_PEND_VALIDATE) {
        if (pv->pend_mfn == cont_mfn && mv__pgt_type(pv_type_word(f)) == cont_level)
            return 0;
        pv->pend = PV_PEND_RELEASE; /* not continued: roll it back */
    }
    if (release_run(c, pv->pend_mfn))
        return PV_YIELD;
    pv->pend = PV_PEND_NONE;
    end_release(c, f);
    return 0;
}

/* ---- One entry of a validated table ------------------------------------------------------ */

int mv__pv_mod_entry(struct pv_ctx *c, mv_mfn_t tbl, uint64_t *tab, unsigned level, unsigned slot,
                  uint64_t val)
{
    uint64_t old = load_entry(tab, slot);
    int rc = mv__pv_check_bits(c, level, slot, val);
    if (rc)
        return rc;
    if (old == val) {
        c->pd->updates++;
        return 0;
    }
    /* Only accessed/dirty change: the references stay (the bits were checked above). */
    if ((old & val & MV_PTE_P) && !((old ^ val) & ~PV_PTE_AD)) {
        __atomic_store_n(&tab[slot], val, __ATOMIC_RELEASE);
        c->pd->updates++;
        c->pd->fast_updates++;
        return 0;
    }
    mv_mfn_t t = pv_pte_mfn(val), child = MV_INVALID_MFN;
    if (level >= 2 && (val & MV_PTE_P) && t != tbl && c->pv->pend == PV_PEND_VALIDATE &&
        c->pv->pend_mfn == t && mv__pgt_type(pv_type_word(mv__frame(c->h, t))) == level - 1) {
        rc = mv__pv_get_root(c, t, level - 1);
    } else {
        rc = take_entry(c, tbl, level, val, &child);
        if (rc == PV_NEED_VALIDATE) {
            pv_set_state(mv__frame(c->h, child), pv_partial_state(0, false));
            c->pd->partial++;
            rc = validate_root(c, child);
        }
    }
    if (rc)
        return rc;
    __atomic_store_n(&tab[slot], val, __ATOMIC_RELEASE);
    c->pd->updates++;
    /* The new references are held: now the old ones go. */
    if (drop_entry(c, tbl, level, old, &child) == PV_NEED_RELEASE) {
        struct mv_frame *cf = mv__frame(c->h, child);
        if (mv__pgt_type(pv_type_word(cf)) == level)
            linear_drop(c, tbl, child);
        begin_release(c, cf);
        return finish_release(c, child);
    }
    return 0;
}

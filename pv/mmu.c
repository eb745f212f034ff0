/*
 * pv/mmu.c - the PV guest's calls: mmu_update, mmuext_op, budget, base pointers, stats.
 *
 * Every call takes the domain's PV lock once, first settles the vCPU's open continuation
 * (unless the call continues it), runs its items in order, and stops at the first refusal
 * (nothing of it done), at a preemption (the budget is spent between items, or inside a
 * validation: the item is repeated by the next call) or after an item whose release goes
 * on later (that item counts as done). General references that may be the last are
 * dropped after the lock is released (pv-internal.h).
 */
#include "pv-internal.h"

static void unlock_and_drain(struct pv_ctx *c)
{
    struct pv_domain *pd = c->pd;
    struct mv_frame *q[PV_DEFER_MAX];
    uint32_t n = pd->nr_deferred;
    memcpy(q, pd->deferred, n * sizeof(q[0]));
    pd->nr_deferred = 0;
    mv_spin_unlock(&pd->lock);
    for (uint32_t i = 0; i < n; i++)
        mv__put_page(c->h, q[i]);
}

/* Map an internal result to the call's return, counting it. Under the lock. */
static int finish(struct pv_ctx *c, int rc, uint32_t i, uint32_t *done)
{
    switch (rc) {
    case 0:
        *done = i;
        return 0;
    case PV_YIELD:
        *done = i;
        c->pd->preemptions++;
        return MV_EAGAIN;
    case PV_DONE_DEFERRED:
        *done = i + 1;
        c->pd->preemptions++;
        return MV_EAGAIN;
    default:
        *done = i;
        c->pd->refusals[c->reason]++;
        return rc;
    }
}

static int begin(mv_vcpu_t *v, uint32_t *done, struct pv_ctx *c)
{
    if (!v || !done)
        return MV_EINVAL;
    *done = 0;
    if (!pv_dom(v->d))
        return MV_EOPNOTSUPP; /* not a PV domain */
    if (mv__domain_dying(v->d))
        return MV_ESRCH;
    mv__pv_ctx_init(c, v);
    return 0;
}

static int owner_check(struct pv_ctx *c, struct mv_frame *f)
{
    uint32_t owner = mv__frame_owner(f);
    if (owner == c->d->domid)
        return 0;
    c->reason = MV_PV_REFUSE_OWNER;
    return owner <= MV_DOMID_MAX ? MV_EXDEV : MV_EPERM;
}

/* ---- mmu_update ------------------------------------------------------------------------ */

static int one_update(struct pv_ctx *c, const struct mv_pv_mmu_update *r)
{
    if ((r->ptr & MV_PV_MMU_CMD_MASK) != MV_PV_MMU_NORMAL_PT_UPDATE) {
        c->reason = MV_PV_REFUSE_ADDRESS;
        return MV_EOPNOTSUPP;
    }
    uint64_t addr = r->ptr & ~(uint64_t)MV_PV_MMU_CMD_MASK;
    if (addr & 7) {
        c->reason = MV_PV_REFUSE_ADDRESS;
        return MV_EINVAL;
    }
    mv_mfn_t tm = addr >> MV_PAGE_SHIFT;
    unsigned slot = (unsigned)((addr & (MV_PAGE_SIZE - 1)) >> 3);
    struct mv_heap_node *n = mv__mfn_node(c->h, tm);
    int rc;
    if (!n) {
        c->reason = MV_PV_REFUSE_ADDRESS;
        return MV_ERANGE;
    }
    struct mv_frame *tf = &n->ft[tm - n->first_mfn];
    uint64_t *tab = mv__frame_va_fast(n, tm);
    if ((rc = owner_check(c, tf)))
        return rc;
    uint64_t x = pv_type_word(tf);
    unsigned type = mv__pgt_type(x);
    if ((x & MV_PGT_COUNT_MASK) && mv__pgt_is_table(type)) {
        if (!(x & MV_PGT_VALIDATED)) {
            c->reason = MV_PV_REFUSE_TYPE;
            return MV_EBUSY;
        }
        return mv__pv_mod_entry(c, tm, tab, type, slot, r->val);
    }
    /* Not a table: a plain write, if the domain may write the frame. */
    if ((rc = mv__get_page(c->d, tf))) {
        c->reason = rc == MV_EOVERFLOW ? MV_PV_REFUSE_OVERFLOW : MV_PV_REFUSE_OWNER;
        return rc;
    }
    rc = mv__get_page_type(c->h, tf, MV_PGT_WRITABLE);
    if (rc) {
        mv__pv_put_ref(c, tf);
        c->reason = rc == MV_EOVERFLOW ? MV_PV_REFUSE_OVERFLOW : MV_PV_REFUSE_TYPE;
        return rc == MV_EOVERFLOW ? rc : MV_EBUSY;
    }
    __atomic_store_n(&tab[slot], r->val, __ATOMIC_RELEASE);
    c->pd->plain_writes++;
    mv__put_page_type(c->h, tf);
    mv__pv_put_ref(c, tf);
    return 0;
}

/* The continuation a request would be: the table its new entry points at. */
static void update_cont(struct pv_ctx *c, const struct mv_pv_mmu_update *r, mv_mfn_t *m,
                        unsigned *level)
{
    *m = MV_INVALID_MFN;
    *level = 0;
    struct mv_frame *tf = mv__frame(c->h, r->ptr >> MV_PAGE_SHIFT);
    if (!tf || !(r->val & MV_PTE_P))
        return;
    uint64_t x = pv_type_word(tf);
    unsigned type = mv__pgt_type(x);
    if ((x & MV_PGT_VALIDATED) && type >= MV_PGT_L2 && type <= MV_PGT_L4) {
        *m = pv_pte_mfn(r->val);
        *level = type - 1;
    }
}

/*
 * The batch loop both hypercalls share: continue (or roll back) the vCPU's open work,
 * then items one by one under the domain's PV lock, yielding when the work budget or the
 * deferred-put queue runs low; last references are dropped after the unlock.
 */
typedef void (*batch_cont_fn)(struct pv_ctx *c, const void *item, mv_mfn_t *m, unsigned *level);
typedef int (*batch_one_fn)(struct pv_ctx *c, const void *item);

static int run_batch(struct pv_ctx *c, const void *items, size_t stride, uint32_t count,
                     uint32_t *done, batch_cont_fn cont, batch_one_fn one)
{
    mv_spin_lock(&c->pd->lock);
    mv_mfn_t cm = MV_INVALID_MFN;
    unsigned cl = 0;
    if (count)
        cont(c, items, &cm, &cl);
    uint32_t i = 0;
    int rc = mv__pv_settle(c, cm, cl);
    for (; !rc && i < count; i++) {
        if (i && (!c->budget || c->pd->nr_deferred + PV_DEFER_RESERVE > PV_DEFER_MAX)) {
            rc = PV_YIELD;
            break;
        }
        if ((rc = one(c, (const uint8_t *)items + (size_t)i * stride)))
            break;
        if (c->budget)
            c->budget--;
        /* An open validation the first item did not continue is rolled back now. */
        if (c->pv->pend == PV_PEND_VALIDATE && mv__pv_settle(c, MV_INVALID_MFN, 0)) {
            rc = PV_DONE_DEFERRED;
            break;
        }
    }
    rc = finish(c, rc, i, done);
    unlock_and_drain(c);
    return rc;
}

static void update_cont_item(struct pv_ctx *c, const void *item, mv_mfn_t *m, unsigned *level)
{
    update_cont(c, item, m, level);
}

static int one_update_item(struct pv_ctx *c, const void *item)
{
    return one_update(c, item);
}

MV_API int mv_pv_mmu_update(mv_vcpu_t *v, const struct mv_pv_mmu_update *reqs, uint32_t count,
                            uint32_t *done)
{
    struct pv_ctx c;
    int rc = begin(v, done, &c);
    if (rc)
        return rc;
    if (count && !reqs)
        return MV_EINVAL;
    return run_batch(&c, reqs, sizeof(*reqs), count, done, update_cont_item, one_update_item);
}

/* ---- mmuext_op ------------------------------------------------------------------------ */

static int frame_arg(struct pv_ctx *c, mv_mfn_t mfn, struct mv_frame **f)
{
    *f = mv__frame(c->h, mfn);
    if (!*f) {
        c->reason = MV_PV_REFUSE_OWNER;
        return MV_ERANGE;
    }
    return owner_check(c, *f);
}

static int pin(struct pv_ctx *c, mv_mfn_t mfn, unsigned level)
{
    struct mv_frame *f;
    int rc = frame_arg(c, mfn, &f);
    if (rc)
        return rc;
    if (pv_type_word(f) & MV_PGT_PINNED) {
        c->reason = MV_PV_REFUSE_PIN;
        return MV_EALREADY;
    }
    if ((rc = mv__pv_get_root(c, mfn, level)))
        return rc;
    atomic_fetch_or_explicit(&f->type_info, MV_PGT_PINNED, memory_order_acq_rel);
    c->pd->pinned++;
    return 0;
}

static int unpin(struct pv_ctx *c, mv_mfn_t mfn)
{
    struct mv_frame *f;
    int rc = frame_arg(c, mfn, &f);
    if (rc)
        return rc;
    if (!(pv_type_word(f) & MV_PGT_PINNED)) {
        c->reason = MV_PV_REFUSE_PIN;
        return MV_EINVAL;
    }
    atomic_fetch_and_explicit(&f->type_info, ~MV_PGT_PINNED, memory_order_acq_rel);
    c->pd->pinned--;
    return mv__pv_put_root(c, mfn);
}

static void flush_vcpus(struct pv_ctx *c, unsigned scope, uint64_t linear, bool all)
{
    struct mv_flush_request req = {.domid = (mv_domid_t)c->d->domid, .scope = (uint16_t)scope,
                                   .nr_vcpus = c->d->nr_vcpus, .linear = linear};
    for (uint32_t i = 0; i < c->d->nr_vcpus; i++)
        if (all || i == c->v->id)
            req.vcpu_mask[i / 64] |= 1ull << (i % 64);
    mv__flush(c->h, &req);
    c->pd->flushes++;
}

static int set_base(struct pv_ctx *c, mv_mfn_t mfn, bool user)
{
    mv_mfn_t *slot = user ? &c->pv->ubase : &c->pv->kbase;
    int rc;
    if (mfn != MV_INVALID_MFN) {
        struct mv_frame *f;
        if ((rc = frame_arg(c, mfn, &f)) || (rc = mv__pv_get_root(c, mfn, MV_PGT_L4)))
            return rc;
    }
    mv_mfn_t old = *slot;
    *slot = mfn;
    if (user) {
        c->v->guest_table_user = mfn;
    } else {
        c->v->guest_table = mfn;
        /* A new kernel base is a CR3 write: the vCPU's non-global translations go. */
        flush_vcpus(c, MV_FLUSH_LINEAR_ALL, 0, false);
    }
    return old == MV_INVALID_MFN ? 0 : mv__pv_put_root(c, old);
}

static bool canonical(uint64_t va)
{
    return (uint64_t)((int64_t)(va << 16) >> 16) == va;
}

static int one_op(struct pv_ctx *c, const struct mv_pv_mmuext_op *op)
{
    if (op->pad) {
        c->reason = MV_PV_REFUSE_OTHER;
        return MV_EINVAL;
    }
    switch (op->cmd) {
    case MV_PV_PIN_L1_TABLE:
    case MV_PV_PIN_L2_TABLE:
    case MV_PV_PIN_L3_TABLE:
    case MV_PV_PIN_L4_TABLE:
        return pin(c, op->arg, op->cmd - MV_PV_PIN_L1_TABLE + MV_PGT_L1);
    case MV_PV_UNPIN_TABLE:
        return unpin(c, op->arg);
    case MV_PV_NEW_BASEPTR:
        return set_base(c, op->arg, false);
    case MV_PV_NEW_USER_BASEPTR:
        return set_base(c, op->arg, true);
    case MV_PV_TLB_FLUSH_LOCAL:
    case MV_PV_TLB_FLUSH_ALL:
        flush_vcpus(c, MV_FLUSH_LINEAR_ALL, 0, op->cmd == MV_PV_TLB_FLUSH_ALL);
        return 0;
    case MV_PV_INVLPG_LOCAL:
    case MV_PV_INVLPG_ALL:
        if (!canonical(op->arg)) {
            c->reason = MV_PV_REFUSE_ADDRESS;
            return MV_EINVAL;
        }
        flush_vcpus(c, MV_FLUSH_LINEAR_ONE, op->arg, op->cmd == MV_PV_INVLPG_ALL);
        return 0;
    default:
        c->reason = MV_PV_REFUSE_OTHER;
        return MV_EINVAL;
    }
}

static void op_cont(const struct mv_pv_mmuext_op *op, mv_mfn_t *m, unsigned *level)
{
    *m = MV_INVALID_MFN;
    *level = 0;
    if (op->cmd <= MV_PV_PIN_L4_TABLE) {
        *m = op->arg;
        *level = op->cmd - MV_PV_PIN_L1_TABLE + MV_PGT_L1;
    } else if (op->cmd == MV_PV_NEW_BASEPTR || op->cmd == MV_PV_NEW_USER_BASEPTR) {
        *m = op->arg;
        *level = MV_PGT_L4;
    }
}

static void op_cont_item(struct pv_ctx *c, const void *item, mv_mfn_t *m, unsigned *level)
{
    (void)c;
    op_cont(item, m, level);
}

static int one_op_item(struct pv_ctx *c, const void *item)
{
    return one_op(c, item);
}

MV_API int mv_pv_mmuext_op(mv_vcpu_t *v, const struct mv_pv_mmuext_op *ops, uint32_t count,
                           uint32_t *done)
{
    struct pv_ctx c;
    int rc = begin(v, done, &c);
    if (rc)
        return rc;
    if (count && !ops)
        return MV_EINVAL;
    return run_batch(&c, ops, sizeof(*ops), count, done, op_cont_item, one_op_item);
}

/* ---- Settings and statistics ------------------------------------------------------------ */

MV_API int mv_pv_set_budget(mv_domain_t *d, uint32_t entries)
{
    if (!d)
        return MV_EINVAL;
    struct pv_domain *pd = pv_dom(d);
    if (!pd)
        return MV_EOPNOTSUPP;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    mv_spin_lock(&pd->lock);
    pd->budget = entries ? entries : MV_PV_DEFAULT_BUDGET;
    mv_spin_unlock(&pd->lock);
    return 0;
}

MV_API int mv_pv_get_baseptrs(const mv_vcpu_t *v, mv_mfn_t *kernel, mv_mfn_t *user)
{
    if (!v || !pv_dom(v->d))
        return v ? MV_EOPNOTSUPP : MV_EINVAL;
    const struct pv_vcpu *pv = v->mod[MV_MOD_PV];
    if (kernel)
        *kernel = pv->kbase;
    if (user)
        *user = pv->ubase;
    return 0;
}

MV_API int mv_pv_stats(mv_domain_t *d, struct mv_pv_stats *st)
{
    if (!d)
        return MV_EINVAL;
    struct pv_domain *pd = pv_dom(d);
    if (!pd)
        return MV_EOPNOTSUPP;
    int rc = mv__prepare_out(st, sizeof(*st));
    if (rc)
        return rc;
    mv_spin_lock(&pd->lock);
    memcpy(st->tables, pd->tables, sizeof(st->tables));
    st->partial = pd->partial;
    st->pinned = pd->pinned;
    st->validations = pd->validations;
    st->devalidations = pd->devalidations;
    st->updates = pd->updates;
    st->fast_updates = pd->fast_updates;
    st->plain_writes = pd->plain_writes;
    st->preemptions = pd->preemptions;
    st->flushes = pd->flushes;
    memcpy(st->refusals, pd->refusals, sizeof(st->refusals));
    mv_spin_unlock(&pd->lock);
    return 0;
}

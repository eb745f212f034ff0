/*
 * sim/oracle.c - the oracle: a deliberately plain walker, separate from the vCPU's, that
 * says what an access must end in, and the TLB check built on it.
 *
 * HVM: each guest table entry is read by gfn through mv_p2m_lookup (no EPT walk, no TLB,
 * no A/D updates), then the page reached is looked up; what the engine fixes by itself (a
 * write to a log-dirty page) counts as reaching the frame. The vCPU sets A/D bits only
 * with EPT write permission, so where an entry lacks its A bit (or the leaf its D bit for
 * a write) the oracle asks the same of that table's p2m entry. PV: the machine-address
 * tables, every frame reached (tables and page) checked: it must be the domain's and its
 * m2p back-pointer must name a gfn the p2m maps to that frame.
 *
 * Shadow paging is HVM to the oracle, with the engine's documented choices where x86
 * leaves them to the hypervisor: a guest table that is not readable RAM ends the walk with
 * a reserved-bit #PF, a CR3 that names no RAM is refused (MV_EFAULT), and the accessed and
 * dirty bits are the engine's own writes (dropped on ram_ro and ram_shared tables), so
 * they need no p2m right.
 *
 * Nothing here shares code with walk.c but the result and access constants.
 */
#include <stdio.h>

#include "sim-internal.h"

enum { O_LEAF, O_NOT_PRESENT, O_RESERVED, O_STOP };

struct o_walk {
    int leaf_level;    /* 1 (4 KiB) .. 3 (1 GiB) */
    uint64_t pte[5];   /* by level 4..1 */
    uint64_t where[5]; /* gpa (HVM) or machine address (PV) of each entry */
    bool w, u, nx, g;
    uint64_t pa;       /* address the va maps to */
};

static bool o_is_hvm(const struct mv_sim_vcpu *sv)
{
    return sv->hvm;
}

/* PV: the frame is the domain's and p2m and m2p agree on it. */
static bool pv_frame_ok(struct mv_sim_vcpu *sv, mv_mfn_t mfn)
{
    struct mv_page_info pi = {.size = sizeof(pi)};
    if (mv_page_info(sv->h, mfn, &pi) != 0)
        return false;
    if (pi.owner != sv->domid || pi.gfn == MV_INVALID_GFN)
        return false;
    struct mv_p2m_entry pe;
    if (mv_p2m_lookup(sv->d, pi.gfn, &pe) != 0)
        return false;
    bool ram = pe.type == MV_P2M_RAM_RW || pe.type == MV_P2M_RAM_RO ||
               pe.type == MV_P2M_RAM_LOGDIRTY || pe.type == MV_P2M_RAM_SHARED;
    return ram && pe.mfn == mfn;
}

/* Read the 8-byte guest entry at a (gpa or machine address). MV_SIM_OK or the stop. */
static uint32_t o_read(struct mv_sim_vcpu *sv, uint64_t a, uint64_t *val, struct mv_sim_result *r)
{
    mv_mfn_t mfn;
    r->addr = a;
    if (o_is_hvm(sv)) {
        struct mv_p2m_entry pe;
        int rc = mv_p2m_lookup(sv->d, a >> MV_PAGE_SHIFT, &pe);
        if (rc) {
            r->kind = MV_SIM_ENGINE_ERROR;
            r->rc = rc;
            return r->kind;
        }
        if (pe.type == MV_P2M_MMIO_DIRECT) {
            r->kind = MV_SIM_EPT_MMIO;
            return r->kind;
        }
        if (pe.type != MV_P2M_RAM_RW && pe.type != MV_P2M_RAM_RO &&
            pe.type != MV_P2M_RAM_LOGDIRTY && pe.type != MV_P2M_RAM_SHARED) {
            r->kind = MV_SIM_EPT_HOLE;
            return r->kind;
        }
        if (!(pe.access & MV_P2M_R)) {
            r->kind = MV_SIM_EPT_DENIED;
            return r->kind;
        }
        mfn = pe.mfn;
    } else {
        mfn = a >> MV_PAGE_SHIFT;
        if (!pv_frame_ok(sv, mfn)) {
            r->kind = MV_SIM_BAD_FRAME;
            return r->kind;
        }
    }
    const uint8_t *p = mv_frame_va(sv->h, mfn);
    if (!p) {
        r->kind = MV_SIM_BAD_FRAME;
        return r->kind;
    }
    *val = atomic_load_explicit((const _Atomic uint64_t *)(const void *)(p + (a & 0xfff)),
                                memory_order_acquire);
    return MV_SIM_OK;
}

static bool o_reserved(int level, uint64_t e, unsigned maxphy, bool nxe, bool gb)
{
    if (!nxe && (e >> 63))
        return true;
    if (maxphy < 52 && ((e >> maxphy) & ((1ull << (52 - maxphy)) - 1)))
        return true;
    bool ps = (e >> 7) & 1;
    if (level == 4)
        return ps;
    if (level == 3 && ps)
        return !gb || ((e >> 13) & 0x1ffff); /* 17 bits: 13..29 */
    if (level == 2 && ps)
        return ((e >> 13) & 0xff) != 0; /* 8 bits: 13..20 */
    return false;
}

static uint64_t o_root(struct mv_sim_vcpu *sv, uint32_t flags)
{
    const mv_vcpu_t *v = sv->v;
    if (o_is_hvm(sv))
        return v->state.cr3 & 0x000ffffffffff000ull;
    mv_mfn_t m = sv->root_override;
    if (m == MV_INVALID_MFN) {
        bool user = (flags & MV_SIM_USER) && !(flags & MV_SIM_IMPLICIT);
        m = user && v->guest_table_user != MV_INVALID_MFN ? v->guest_table_user : v->guest_table;
    }
    return m == MV_INVALID_MFN ? ~0xfffull : m << MV_PAGE_SHIFT;
}

static int o_walk(struct mv_sim_vcpu *sv, uint64_t root, uint64_t va, struct o_walk *o,
                  struct mv_sim_result *r)
{
    const struct mv_vcpu_state *cs = &sv->v->state;
    bool nxe = (cs->efer & MV_EFER_NXE) != 0;
    bool gb = (cs->flags & MV_VCPUF_GBPAGES) != 0;
    memset(o, 0, sizeof(*o));
    o->w = o->u = true;
    uint64_t table = root;
    for (int level = 4; level >= 1; level--) {
        unsigned index = (unsigned)(va >> (12 + 9 * (level - 1))) & 511;
        uint64_t where = table + 8ull * index;
        uint64_t e;
        if (o_read(sv, where, &e, r) != MV_SIM_OK)
            return sv->shadow ? O_RESERVED : O_STOP;
        o->pte[level] = e;
        o->where[level] = where;
        if (!(e & 1))
            return O_NOT_PRESENT;
        if (o_reserved(level, e, sv->d->phys_bits, nxe, gb))
            return O_RESERVED;
        o->w = o->w && (e & 2);
        o->u = o->u && (e & 4);
        o->nx = o->nx || (nxe && (e >> 63));
        bool leaf = level == 1 || ((level == 2 || level == 3) && ((e >> 7) & 1));
        if (leaf) {
            uint64_t size = 1ull << (12 + 9 * (level - 1));
            o->leaf_level = level;
            o->g = ((e >> 8) & 1) && (cs->cr4 & MV_CR4_PGE);
            o->pa = (e & 0x000ffffffffff000ull & ~(size - 1)) | (va & (size - 1));
            return O_LEAF;
        }
        table = e & 0x000ffffffffff000ull;
    }
    return O_STOP; /* not reached */
}

static bool o_allowed(const struct o_walk *o, uint32_t op, uint32_t flags,
                      const struct mv_vcpu_state *cs)
{
    bool implicit = (flags & MV_SIM_IMPLICIT) != 0;
    bool cpl3 = (flags & MV_SIM_USER) && !implicit;
    bool smap_blocks = o->u && (cs->cr4 & MV_CR4_SMAP) && (implicit || !(flags & MV_SIM_AC));
    switch (op) {
    case MV_SIM_READ:
        return cpl3 ? o->u : !smap_blocks;
    case MV_SIM_WRITE:
        if (cpl3)
            return o->u && o->w;
        return !smap_blocks && (o->w || !(cs->cr0 & MV_CR0_WP));
    default:
        if (o->nx)
            return false;
        return cpl3 ? o->u : !(o->u && (cs->cr4 & MV_CR4_SMEP));
    }
}

static uint32_t o_fault(uint32_t op, uint32_t flags, const struct mv_vcpu_state *cs, bool p,
                        bool rsvd, uint64_t va, struct mv_sim_result *r)
{
    uint32_t code = 0;
    if (p)
        code |= MV_SIM_PF_P;
    if (rsvd)
        code |= MV_SIM_PF_P | MV_SIM_PF_RSVD;
    if (op == MV_SIM_WRITE)
        code |= MV_SIM_PF_W;
    if ((flags & MV_SIM_USER) && !(flags & MV_SIM_IMPLICIT))
        code |= MV_SIM_PF_U;
    if (op == MV_SIM_FETCH && ((cs->efer & MV_EFER_NXE) || (cs->cr4 & MV_CR4_SMEP)))
        code |= MV_SIM_PF_ID;
    r->kind = MV_SIM_PAGE_FAULT;
    r->error_code = code;
    r->addr = va;
    return r->kind;
}

/*
 * HVM: the p2m's verdict on an access to gpa after the engine handled what it handles.
 * MV_SIM_OK with *mfn, or the outcome in r.
 */
static uint32_t o_p2m(struct mv_sim_vcpu *sv, uint64_t gpa, unsigned right, mv_mfn_t *mfn,
                      struct mv_sim_result *r)
{
    struct mv_p2m_entry pe;
    r->addr = gpa;
    int rc = mv_p2m_lookup(sv->d, gpa >> MV_PAGE_SHIFT, &pe);
    if (rc) {
        r->kind = MV_SIM_ENGINE_ERROR;
        r->rc = rc;
        return r->kind;
    }
    switch (pe.type) {
    case MV_P2M_RAM_RW:
    case MV_P2M_RAM_RO:
    case MV_P2M_RAM_LOGDIRTY:
    case MV_P2M_RAM_SHARED:
        break;
    case MV_P2M_MMIO_DIRECT:
        r->kind = right == MV_P2M_X ? MV_SIM_EPT_DENIED : MV_SIM_EPT_MMIO;
        return r->kind;
    default:
        r->kind = MV_SIM_EPT_HOLE;
        return r->kind;
    }
    if (!(pe.access & right)) {
        if (right == MV_P2M_W && pe.type == MV_P2M_RAM_LOGDIRTY) {
            /* the engine marks it dirty and makes it writable */
        } else if (right == MV_P2M_W && pe.type == MV_P2M_RAM_SHARED) {
            r->kind = MV_SIM_ENGINE_ERROR; /* unsharing arrives with the sharing module */
            r->rc = MV_EOPNOTSUPP;
            return r->kind;
        } else {
            r->kind = MV_SIM_EPT_DENIED;
            return r->kind;
        }
    }
    *mfn = pe.mfn;
    return MV_SIM_OK;
}

uint32_t mv_sim_oracle(mv_sim_vcpu_t *sv, uint64_t va, uint32_t op, uint32_t flags,
                       struct mv_sim_result *r)
{
    const struct mv_vcpu_state *cs = &sv->v->state;
    struct o_walk o;
    memset(r, 0, sizeof(*r));
    if (mv__sim_canon(va) != va) {
        r->kind = MV_SIM_GP_FAULT;
        r->addr = va;
        return r->kind;
    }
    if (sv->shadow) {
        struct mv_p2m_entry pe;
        if (mv_p2m_lookup(sv->d, (cs->cr3 & X86_ADDR) >> MV_PAGE_SHIFT, &pe) ||
            !p2m_is_ram(pe.type)) {
            r->kind = MV_SIM_ENGINE_ERROR;
            r->rc = MV_EFAULT;
            return r->kind;
        }
    }
    switch (o_walk(sv, o_root(sv, flags), va, &o, r)) {
    case O_NOT_PRESENT:
        return o_fault(op, flags, cs, false, false, va, r);
    case O_RESERVED:
        return o_fault(op, flags, cs, false, true, va, r);
    case O_STOP:
        return r->kind;
    default:
        break;
    }
    if (!o_allowed(&o, op, flags, cs))
        return o_fault(op, flags, cs, true, false, va, r);
    mv_mfn_t mfn;
    if (o_is_hvm(sv)) {
        unsigned right = op == MV_SIM_WRITE ? MV_P2M_W : op == MV_SIM_FETCH ? MV_P2M_X : MV_P2M_R;
        if (o_p2m(sv, o.pa, right, &mfn, r) != MV_SIM_OK)
            return r->kind;
        /* Accessed (and dirty) bits the walk must set are writes to the tables. */
        for (int level = 4; sv->hap && level >= o.leaf_level; level--) {
            bool need = !(o.pte[level] & X86_A) ||
                        (level == o.leaf_level && op == MV_SIM_WRITE && !(o.pte[level] & X86_D));
            mv_mfn_t unused;
            if (need && o_p2m(sv, o.where[level], MV_P2M_W, &unused, r) != MV_SIM_OK)
                return r->kind;
        }
    } else {
        mfn = o.pa >> MV_PAGE_SHIFT;
        if (!pv_frame_ok(sv, mfn)) {
            r->kind = MV_SIM_BAD_FRAME;
            r->addr = o.pa;
            return r->kind;
        }
    }
    memset(r, 0, sizeof(*r));
    r->kind = MV_SIM_OK;
    r->mfn = mfn;
    r->addr = o.pa;
    r->order = 9u * (unsigned)(o.leaf_level - 1);
    return MV_SIM_OK;
}

unsigned mv_sim_verify_page(mv_sim_vcpu_t *sv, uint64_t va, uint32_t flags,
                            struct mv_sim_result *vcpu, struct mv_sim_result *oracle)
{
    static const uint32_t ops[3] = {MV_SIM_READ, MV_SIM_WRITE, MV_SIM_FETCH};
    unsigned bad = 0;
    for (unsigned i = 0; i < 3; i++) {
        struct mv_sim_result a, b;
        mv_sim_oracle(sv, va, ops[i], flags, &b);
        uint32_t k = mv_sim_translate(sv, va, ops[i], flags, &a);
        if ((k == MV_SIM_OK || k == MV_SIM_EMULATE) && ops[i] == MV_SIM_WRITE) {
            uint8_t *p = mv_frame_va(sv->h, a.mfn);
            uint64_t x = 0;
            if (p)
                memcpy(&x, p + (va & 0xfff), sizeof(x)); /* the bytes read, written back */
            if (!p) {
                a.kind = MV_SIM_BAD_FRAME;
            } else if (k == MV_SIM_OK) {
                memcpy(p + (va & 0xfff), &x, sizeof(x));
            } else {
                mv__sim_engine_begin(sv);
                int rc = mv_shadow_emulate_write(sv->v, a.addr, &x, sizeof(x));
                mv__sim_engine_end(sv);
                sv->st.emulated_writes++;
                if (rc) {
                    a.kind = MV_SIM_ENGINE_ERROR;
                    a.rc = rc;
                }
            }
        }
        if (!mv_sim_same(&a, &b)) {
            if (!bad) {
                if (vcpu)
                    *vcpu = a;
                if (oracle)
                    *oracle = b;
            }
            bad++;
        }
    }
    return bad;
}

/* ---- The TLB check ------------------------------------------------------------------------- */

bool mv__sim_path_read(struct mv_sim_vcpu *sv, uint64_t addr, uint64_t *val)
{
    struct mv_sim_result r;
    return o_read(sv, addr, val, &r) == MV_SIM_OK;
}

static void violation(struct mv_sim_tlb_report *rep, uint64_t va, const char *what)
{
    if (!rep->violations++) {
        rep->first_va = va;
        rep->first_what = what;
    }
}

static bool guest_changed(struct mv_sim_vcpu *sv, const struct sim_tlbe *e)
{
    for (unsigned i = 0; i < e->npath; i++) {
        uint64_t now;
        if (!mv__sim_path_read(sv, e->path[i].addr, &now) ||
            (now & ~(X86_A | X86_D)) != e->path[i].val)
            return true;
    }
    return false;
}

int mv_sim_tlb_check(mv_sim_vcpu_t *sv, struct mv_sim_tlb_report *rep)
{
    memset(rep, 0, sizeof(*rep));
    mv__sim_poll(sv); /* flushes asked of this vCPU happen before it is checked */
    /* The root the entries were filled under (sync_root keeps the TLB to one root). */
    uint64_t root = sv->seen_root;
    for (unsigned size = 0; size < SIM_TLB_SIZES; size++) {
        for (unsigned set = 0; set < SIM_TLB_SETS; set++) {
            for (unsigned way = 0; way < SIM_TLB_WAYS; way++) {
                const struct sim_tlbe *e = &sv->tlb.e[size][set][way];
                if (!mv__sim_tlbe_live(&sv->tlb, e))
                    continue;
                rep->entries++;
                uint64_t va = mv__sim_tlbe_va(size, e);
                /* Frames first: none may have left the domain or become a table while a
                 * translation (writable, for the type rule) of it is cached. */
                struct mv_page_info pi = {.size = sizeof(pi)};
                if (mv_page_info(sv->h, e->mfn, &pi) != 0 || pi.owner != sv->domid) {
                    violation(rep, va, "frame-left-domain");
                    continue;
                }
                if (!sv->hvm && (e->flags & TLBF_W) && pi.type_refs &&
                    pi.type != MV_PGT_WRITABLE) {
                    violation(rep, va, "writable-translation-of-table");
                    continue;
                }
                struct o_walk o;
                struct mv_sim_result r;
                bool differs = o_walk(sv, root, va, &o, &r) != O_LEAF;
                if (!differs) {
                    mv_mfn_t mfn = o.pa >> MV_PAGE_SHIFT;
                    unsigned rights = EPT_RWX;
                    if (sv->hvm) {
                        struct mv_p2m_entry pe;
                        if (mv_p2m_lookup(sv->d, o.pa >> MV_PAGE_SHIFT, &pe) != 0 ||
                            pe.type == MV_P2M_INVALID || pe.type == MV_P2M_MMIO_DIRECT) {
                            differs = true;
                        } else {
                            mfn = pe.mfn;
                            rights = pe.access;
                            /* A shadow leaf is writable only onto ram_rw the p2m lets
                             * the guest write (log-dirty re-protects through it). */
                            if (sv->shadow && (e->flags & TLBF_W) &&
                                (pe.type != MV_P2M_RAM_RW || !(pe.access & MV_P2M_W)))
                                differs = true;
                        }
                    }
                    differs = differs || mfn != e->mfn || ((e->flags & TLBF_W) && !o.w) ||
                              ((e->flags & TLBF_U) && !o.u) || (!(e->flags & TLBF_NX) && o.nx) ||
                              (e->ept & ~rights);
                }
                if (!differs)
                    continue;
                if (guest_changed(sv, e))
                    rep->stale_legal++;
                else
                    violation(rep, va, "stale-after-engine-change");
            }
        }
    }
    return rep->violations ? MV_EUCLEAN : 0;
}

int mv_sim_gva_to_gfn(mv_domain_t *d, mv_gfn_t root_gfn, uint64_t va, mv_gfn_t *gfn)
{
    mv_host_t *h = mv_domain_host(d);
    uint64_t table = root_gfn << MV_PAGE_SHIFT;
    for (int level = 4; level >= 1; level--) {
        struct mv_p2m_entry pe;
        if (mv_p2m_lookup(d, table >> MV_PAGE_SHIFT, &pe) != 0 || pe.type == MV_P2M_INVALID ||
            pe.type == MV_P2M_MMIO_DIRECT)
            return MV_EFAULT;
        const uint64_t *t = mv_frame_va(h, pe.mfn);
        if (!t)
            return MV_EFAULT;
        uint64_t e = t[(va >> (12 + 9 * (level - 1))) & 511];
        if (!(e & X86_P))
            return MV_ENOENT;
        if (level == 1 || ((level == 2 || level == 3) && (e & X86_PS))) {
            uint64_t size = 1ull << (12 + 9 * (level - 1));
            *gfn = ((e & X86_ADDR & ~(size - 1)) | (va & (size - 1))) >> MV_PAGE_SHIFT;
            return 0;
        }
        table = e & X86_ADDR;
    }
    return MV_ENOENT;
}

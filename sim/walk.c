/*
 * sim/walk.c - the hardware vCPU's MMU: x86-64 4-level walks in machine memory (PV) or in
 * two dimensions through the EPT-format p2m (HAP), with the TLB in front.
 *
 * The order is the hardware's (Intel SDM vol. 3, 4.5-4.8, 28.3): each level's entry is
 * read (under HAP at a guest-physical address the EPT translates first: a violation there
 * goes to the engine and the walk starts again when it fixed it); a not-present entry or
 * one with reserved bits set ends the walk with #PF; rights combine across levels (R/W
 * and U/S must be set at every level, XD at any level forbids fetches when EFER.NXE is
 * on) and are checked against the access at the end (CR0.WP, SMEP, SMAP with EFLAGS.AC
 * and implicit supervisor accesses). Then the final guest-physical address goes through
 * the EPT with the access's right. Only when the access is allowed are the accessed bits
 * (and the leaf's dirty bit for a write) set, top-down, each with a compare-and-swap as
 * the hardware's locked update; under HAP each of those writes needs EPT write permission
 * on the table's page (a log-dirty page faults to the engine, which marks it dirty).
 *
 * Under shadow paging the walk is the PV one over the engine's shadow tables (machine
 * addresses, 4 KiB leaves only) and every #PF is the hypervisor's trap: the engine's
 * outcome decides whether the walk is retried, the guest gets a #PF, or the access is
 * emulated. The guest's own walk is read afterwards (by gfn) only to record it on the TLB
 * entry for the TLB check, as the guest-physical address the translation stands for.
 */
#include "sim-internal.h"

enum { WALK_DONE = 0, WALK_RETRY = 1 };
enum { EPTX_OK = 0, EPTX_VIOLATION = 1, EPTX_MISCONFIG = 2 };

#define SIM_RETRIES 8

struct ept_res {
    mv_mfn_t mfn;
    unsigned rights;
    unsigned order;
};

bool mv__sim_permits(unsigned tf, uint32_t op, uint32_t flags, uint64_t cr0, uint64_t cr4)
{
    bool user = (flags & MV_SIM_USER) && !(flags & MV_SIM_IMPLICIT);
    bool upage = (tf & TLBF_U) != 0;
    if (user) {
        if (!upage)
            return false;
        if (op == MV_SIM_WRITE && !(tf & TLBF_W))
            return false;
        if (op == MV_SIM_FETCH && (tf & TLBF_NX))
            return false;
        return true;
    }
    if (op == MV_SIM_FETCH) {
        if (tf & TLBF_NX)
            return false;
        return !(upage && (cr4 & MV_CR4_SMEP));
    }
    if (upage && (cr4 & MV_CR4_SMAP) && ((flags & MV_SIM_IMPLICIT) || !(flags & MV_SIM_AC)))
        return false;
    if (op == MV_SIM_WRITE && !(tf & TLBF_W) && (cr0 & MV_CR0_WP))
        return false;
    return true;
}

uint32_t mv__sim_pf_code(bool present, bool rsvd, uint32_t op, uint32_t flags, uint64_t cr4,
                         uint64_t efer)
{
    uint32_t code = (present || rsvd) ? MV_SIM_PF_P : 0;
    if (rsvd)
        code |= MV_SIM_PF_RSVD;
    if (op == MV_SIM_WRITE)
        code |= MV_SIM_PF_W;
    if ((flags & MV_SIM_USER) && !(flags & MV_SIM_IMPLICIT))
        code |= MV_SIM_PF_U;
    if (op == MV_SIM_FETCH && ((efer & MV_EFER_NXE) || (cr4 & MV_CR4_SMEP)))
        code |= MV_SIM_PF_ID;
    return code;
}

static bool reserved(uint64_t e, unsigned lv, unsigned pbits, bool nxe, bool gb)
{
    uint64_t m = ((1ull << 52) - 1) & ~((1ull << pbits) - 1);
    if (!nxe)
        m |= X86_NX;
    if (lv == 3) {
        m |= X86_PS;
    } else if (lv == 2 && (e & X86_PS)) {
        if (!gb)
            return true;
        m |= 0x3fffe000ull; /* bits 13-29 of a 1 GiB leaf */
    } else if (lv == 1 && (e & X86_PS)) {
        m |= 0x1fe000ull; /* bits 13-20 of a 2 MiB leaf */
    }
    return (e & m) != 0;
}

static unsigned ept_need(uint32_t op)
{
    return op == MV_SIM_WRITE ? EPT_W : op == MV_SIM_FETCH ? EPT_X : EPT_R;
}

/* The EPT walk of one guest-physical address, as the hardware does it. */
static int ept_xlate(struct mv_sim_vcpu *sv, mv_mfn_t root, uint64_t gpa, unsigned need,
                     struct ept_res *er)
{
    mv_host_t *h = sv->h;
    uint64_t gfn = gpa >> MV_PAGE_SHIFT;
    if (gpa >> 48)
        return EPTX_VIOLATION; /* beyond what a 4-level EPT translates */
    unsigned rights = EPT_RWX;
    int res = EPTX_MISCONFIG;
    uint32_t slot = mv__epoch_enter(h);
    mv_mfn_t t = root;
    for (unsigned lv = P2M_LEVELS - 1;; lv--) {
        const uint8_t *tva = mv__sim_frame(h, t);
        if (!tva)
            break;
        mv_ept_t e = ept_read((const mv_ept_t *)tva + ((gfn >> (9 * lv)) & (EPT_ENTRIES - 1)));
        if (!(e & EPT_RWX)) {
            res = EPTX_VIOLATION;
            er->rights = 0;
            break;
        }
        if ((e & EPT_W) && !(e & EPT_R))
            break;
        rights &= (unsigned)(e & EPT_RWX);
        if (lv == 0 || (e & EPT_LEAF)) {
            unsigned mt = (unsigned)((e & EPT_MT_MASK) >> EPT_MT_SHIFT);
            uint64_t align = (1ull << (MV_PAGE_SHIFT + 9 * lv)) - 1;
            if (lv == 3 || mt == 2 || mt == 3 || mt == 7 || (e & EPT_ADDR_MASK & align))
                break;
            er->order = 9 * lv;
            er->mfn = ept_mfn(e) + (gfn & ((1ull << (9 * lv)) - 1));
            er->rights = rights;
            res = (need & ~rights) ? EPTX_VIOLATION : EPTX_OK;
            break;
        }
        t = ept_mfn(e);
    }
    mv__epoch_exit(h, slot);
    return res;
}

static int ept_fault(struct mv_sim_vcpu *sv, uint64_t gpa, unsigned need, struct mv_sim_result *r)
{
    sv->st.ept_violations++;
    sv->st.exits++;
    unsigned outcome = MV_P2M_DENIED;
    mv__sim_engine_begin(sv);
    int rc = mv_p2m_handle_violation(sv->d, gpa >> MV_PAGE_SHIFT, need, &outcome);
    mv__sim_engine_end(sv);
    r->addr = gpa;
    if (rc == MV_EAGAIN)
        return WALK_RETRY;
    if (rc) {
        r->kind = MV_SIM_ENGINE_ERROR;
        r->rc = rc;
        return WALK_DONE;
    }
    switch (outcome) {
    case MV_P2M_RETRY:
        return WALK_RETRY;
    case MV_P2M_EMULATE_MMIO:
        r->kind = MV_SIM_EPT_MMIO;
        return WALK_DONE;
    case MV_P2M_NO_MEMORY:
        r->kind = MV_SIM_EPT_HOLE;
        return WALK_DONE;
    default:
        r->kind = MV_SIM_EPT_DENIED;
        return WALK_DONE;
    }
}

/* An EPT step of the walk: translated (EPTX_OK), or the walk's verdict in *st. */
static int ept_step(struct mv_sim_vcpu *sv, mv_mfn_t root, uint64_t gpa, unsigned need,
                    struct ept_res *er, struct mv_sim_result *r, int *st)
{
    int x = ept_xlate(sv, root, gpa, need, er);
    if (x == EPTX_OK)
        return EPTX_OK;
    if (x == EPTX_MISCONFIG) {
        r->kind = MV_SIM_EPT_MISCONFIG;
        r->addr = gpa;
        *st = WALK_DONE;
    } else {
        *st = ept_fault(sv, gpa, need, r);
    }
    return x;
}

static int page_fault(struct mv_sim_vcpu *sv, bool present, bool rsvd, uint64_t va, uint32_t op,
                      uint32_t flags, struct mv_sim_result *r)
{
    const struct mv_vcpu_state *cs = &sv->v->state;
    sv->st.page_faults++;
    r->kind = MV_SIM_PAGE_FAULT;
    r->error_code = mv__sim_pf_code(present, rsvd, op, flags, cs->cr4, cs->efer);
    r->addr = va;
    return WALK_DONE;
}

/*
 * Shadow: the guest's own walk of va, entries read by gpa (A/D bits as they are now).
 * The leaf level, or -1 when the guest's tables do not map va (changed meanwhile).
 */
static int guest_path(struct mv_sim_vcpu *sv, uint64_t va, uint64_t *addr, uint64_t *pte,
                      uint64_t *gpa)
{
    uint64_t table = sv->v->state.cr3 & X86_ADDR;
    for (int lv = 3; lv >= 0; lv--) {
        uint64_t ea = table + 8 * ((va >> (12 + 9 * lv)) & 511), e;
        if (!mv__sim_path_read(sv, ea, &e) || !(e & X86_P))
            return -1;
        addr[lv] = ea;
        pte[lv] = e;
        if (lv == 0 || (lv <= 2 && (e & X86_PS))) {
            uint64_t span = 1ull << (12 + 9 * lv);
            *gpa = ((e & X86_ADDR) & ~(span - 1)) + (va & (span - 1));
            return lv;
        }
        table = e & X86_ADDR;
    }
    return -1;
}

/* Shadow: a #PF on the shadow tables goes to the engine; its outcome decides. */
static int shadow_trap(struct mv_sim_vcpu *sv, uint64_t va, uint32_t op, uint32_t flags,
                       struct mv_sim_result *r)
{
    const struct mv_vcpu_state *cs = &sv->v->state;
    uint32_t ec = mv__sim_pf_code(false, false, op, flags, cs->cr4, cs->efer);
    uint32_t acc = ((flags & MV_SIM_AC) ? MV_SHADOW_ACC_AC : 0) |
                   ((flags & MV_SIM_IMPLICIT) ? MV_SHADOW_ACC_IMPLICIT : 0);
    struct mv_shadow_outcome o;
    sv->st.shadow_faults++;
    sv->st.exits++;
    mv__sim_engine_begin(sv);
    int rc = mv_shadow_page_fault(sv->v, va, ec, acc, &o);
    mv__sim_engine_end(sv);
    if (rc) {
        r->kind = MV_SIM_ENGINE_ERROR;
        r->rc = rc;
        r->addr = va;
        return WALK_DONE;
    }
    struct mv_p2m_entry pe;
    bool known = o.kind != MV_SHADOW_FIXED && o.kind != MV_SHADOW_INJECT &&
                 mv_p2m_lookup(sv->d, o.gpa >> MV_PAGE_SHIFT, &pe) == 0;
    r->addr = o.gpa;
    switch (o.kind) {
    case MV_SHADOW_FIXED:
        return WALK_RETRY;
    case MV_SHADOW_INJECT:
        sv->st.page_faults++;
        r->kind = MV_SIM_PAGE_FAULT;
        r->error_code = o.error_code;
        r->addr = va;
        return WALK_DONE;
    case MV_SHADOW_EMULATE:
        r->kind = MV_SIM_EMULATE;
        r->mfn = known ? pe.mfn : MV_INVALID_MFN;
        return WALK_DONE;
    case MV_SHADOW_DENIED:
        r->kind = MV_SIM_EPT_DENIED;
        return WALK_DONE;
    default:
        /* The hypervisor's device model takes mmio; a fetch from a device is refused,
         * and anything else is a hole. */
        if (known && pe.type == MV_P2M_MMIO_DIRECT)
            r->kind = op == MV_SIM_FETCH ? MV_SIM_EPT_DENIED : MV_SIM_EPT_MMIO;
        else
            r->kind = MV_SIM_EPT_HOLE;
        return WALK_DONE;
    }
}

static void tlb_fill(struct mv_sim_vcpu *sv, uint64_t va, unsigned size, mv_mfn_t mfn,
                     uint64_t pa, unsigned tf, unsigned ept, unsigned lv, unsigned gorder,
                     const uint64_t *addr, const uint64_t *pte)
{
    struct sim_tlbe *e = mv__sim_tlb_victim(sv, va, size);
    unsigned shift = 12 + 9 * size;
    e->tag = (va & 0x0000ffffffffffffull) >> shift;
    e->valid = 1;
    e->gen = sv->tlb.gen;
    e->ngen = sv->tlb.ngen;
    e->flags = (uint8_t)tf;
    e->ept = (uint8_t)ept;
    e->gorder = gorder;
    e->mfn = mfn - ((va >> MV_PAGE_SHIFT) & ((1ull << (9 * size)) - 1));
    e->addr = pa & ~((1ull << shift) - 1);
    e->npath = 0;
    for (int l = 3; l >= (int)lv; l--)
        e->path[e->npath++] = (struct sim_path){addr[l], pte[l] & ~(X86_A | X86_D)};
}

static int walk(struct mv_sim_vcpu *sv, uint64_t root, uint64_t va, uint32_t op, uint32_t flags,
                struct mv_sim_result *r)
{
    const struct mv_vcpu_state *cs = &sv->v->state;
    mv_host_t *h = sv->h;
    /* Shadow tables hold machine addresses: the host's width, not the guest's, applies. */
    unsigned pbits = sv->shadow ? 52 : sv->d->phys_bits;
    bool nxe = (cs->efer & MV_EFER_NXE) != 0;
    bool gb = (cs->flags & MV_VCPUF_GBPAGES) != 0;
    mv_mfn_t eroot = sv->hap ? mv_p2m_root(sv->d) >> MV_PAGE_SHIFT : 0;
    uint64_t pte[4], addr[4];
    _Atomic uint64_t *slot[4];
    unsigned tf = TLBF_W | TLBF_U;
    uint64_t table = root;
    struct ept_res er = {0};
    int st;
    int lv;

    sv->st.walks++;
    for (lv = 3;; lv--) {
        uint64_t ea = table + 8 * ((va >> (12 + 9 * lv)) & 511);
        uint8_t *fva;
        if (sv->hap) {
            if (ept_step(sv, eroot, ea, EPT_R, &er, r, &st) != EPTX_OK)
                return st;
            fva = mv__sim_frame(h, er.mfn);
        } else {
            fva = mv__sim_frame(h, ea >> MV_PAGE_SHIFT);
        }
        if (!fva) {
            /* Under HAP, an EPT leaf outside machine memory is a device (mmio_direct). */
            r->kind = sv->hap ? MV_SIM_EPT_MMIO : MV_SIM_BAD_FRAME;
            r->addr = ea;
            return WALK_DONE;
        }
        slot[lv] = (_Atomic uint64_t *)(void *)(fva + (ea & 0xfff));
        uint64_t e = atomic_load_explicit(slot[lv], memory_order_acquire);
        pte[lv] = e;
        addr[lv] = ea;
        if (!(e & X86_P))
            return sv->shadow ? shadow_trap(sv, va, op, flags, r)
                              : page_fault(sv, false, false, va, op, flags, r);
        if (reserved(e, (unsigned)lv, pbits, nxe, gb))
            return sv->shadow ? shadow_trap(sv, va, op, flags, r)
                              : page_fault(sv, true, true, va, op, flags, r);
        if (!(e & X86_RW))
            tf &= ~TLBF_W;
        if (!(e & X86_US))
            tf &= ~TLBF_U;
        if (nxe && (e & X86_NX))
            tf |= TLBF_NX;
        if (lv == 0 || (lv <= 2 && (e & X86_PS)))
            break;
        table = e & X86_ADDR;
    }
    unsigned gorder = 9 * (unsigned)lv;
    uint64_t leaf = pte[lv];
    uint64_t span = 1ull << (12 + gorder);
    uint64_t pa = ((leaf & X86_ADDR) & ~(span - 1)) + (va & (span - 1));
    if ((leaf & X86_G) && (cs->cr4 & MV_CR4_PGE))
        tf |= TLBF_G;
    if (!mv__sim_permits(tf, op, flags, cs->cr0, cs->cr4) ||
        (sv->shadow && op == MV_SIM_WRITE && !(tf & TLBF_W)))
        return sv->shadow ? shadow_trap(sv, va, op, flags, r)
                          : page_fault(sv, true, false, va, op, flags, r);

    mv_mfn_t mfn;
    unsigned size = (unsigned)lv, erights = 0;
    if (sv->hap) {
        if (ept_step(sv, eroot, pa, ept_need(op), &er, r, &st) != EPTX_OK)
            return st;
        mfn = er.mfn;
        erights = er.rights;
        if (!mv__sim_frame(h, mfn)) {
            r->kind = MV_SIM_EPT_MMIO; /* device memory passed through: emulated here */
            r->addr = pa;
            return WALK_DONE;
        }
        if (er.order / 9 < size)
            size = er.order / 9;
    } else {
        mfn = pa >> MV_PAGE_SHIFT;
        if (!mv__sim_frame(h, mfn)) {
            r->kind = MV_SIM_BAD_FRAME;
            r->addr = pa;
            if (sv->shadow) {
                /* A shadow leaf onto a device frame: mmio_direct passed through. */
                uint64_t ga[4], gp[4], gpa;
                if (guest_path(sv, va, ga, gp, &gpa) < 0)
                    return WALK_RETRY;
                r->kind = op == MV_SIM_FETCH ? MV_SIM_EPT_DENIED : MV_SIM_EPT_MMIO;
                r->addr = gpa;
            }
            return WALK_DONE;
        }
    }

    /* Accessed and dirty bits, top-down, as locked updates. */
    for (int l = 3; l >= lv; l--) {
        uint64_t want = pte[l] | X86_A;
        if (l == lv && op == MV_SIM_WRITE)
            want |= X86_D;
        if (want == pte[l])
            continue;
        if (sv->hap) {
            struct ept_res tw;
            if (ept_step(sv, eroot, addr[l], EPT_W, &tw, r, &st) != EPTX_OK)
                return st;
        }
        uint64_t old = pte[l];
        if (!atomic_compare_exchange_strong_explicit(slot[l], &old, want, memory_order_acq_rel,
                                                     memory_order_acquire))
            return WALK_RETRY; /* changed under us: walk again */
        sv->st.ad_updates++;
        pte[l] = want;
    }
    if (pte[lv] & X86_D)
        tf |= TLBF_D;

    if (sv->shadow) {
        /* The TLB entry stands for the guest's walk: record it and its gpa. */
        int glv = guest_path(sv, va, addr, pte, &pa);
        if (glv < 0) {
            /* The guest unmapped va behind an out-of-sync shadow and has not invalidated
             * yet: the shadow's translation is used, as a stale TLB entry would be, but
             * not cached (it stands for no guest walk). */
            sv->st.stale_uses++;
            r->kind = MV_SIM_OK;
            r->mfn = mfn;
            r->addr = 0;
            r->order = 0;
            return WALK_DONE;
        }
        gorder = 9 * (unsigned)glv;
        lv = glv;
        if ((tf & TLBF_G) && !((pte[glv] & X86_G) && (cs->cr4 & MV_CR4_PGE)))
            tf &= ~TLBF_G;
    }
    tlb_fill(sv, va, size, mfn, pa, tf, erights, (unsigned)lv, gorder, addr, pte);
    r->kind = MV_SIM_OK;
    r->mfn = mfn;
    r->addr = pa;
    r->order = gorder;
    return WALK_DONE;
}

/* The current root; a change since the TLB was filled acts as the CR write it is. */
static uint64_t sync_root(struct mv_sim_vcpu *sv, uint32_t flags)
{
    const struct mv_vcpu_state *cs = &sv->v->state;
    uint64_t root;
    if (sv->hvm) {
        root = cs->cr3 & X86_ADDR;
    } else {
        mv_mfn_t m = sv->root_override;
        if (m == MV_INVALID_MFN) {
            m = sv->v->guest_table;
            if ((flags & MV_SIM_USER) && !(flags & MV_SIM_IMPLICIT) &&
                sv->v->guest_table_user != MV_INVALID_MFN)
                m = sv->v->guest_table_user;
        }
        root = m == MV_INVALID_MFN ? ~0xfffull : m << MV_PAGE_SHIFT;
    }
    if (cs->cr0 != sv->seen_cr0 || cs->cr4 != sv->seen_cr4 || cs->efer != sv->seen_efer ||
        cs->flags != sv->seen_flags) {
        mv__sim_tlb_flush_all(sv, false);
        sv->seen_cr0 = cs->cr0;
        sv->seen_cr4 = cs->cr4;
        sv->seen_efer = cs->efer;
        sv->seen_flags = cs->flags;
        sv->seen_root = root;
    } else if (root != sv->seen_root) {
        mv__sim_tlb_flush_all(sv, (cs->cr4 & MV_CR4_PGE) != 0);
        sv->seen_root = root;
    }
    return root;
}

static uint32_t translate(mv_sim_vcpu_t *sv, uint64_t va, uint32_t op, uint32_t flags,
                          struct mv_sim_result *r)
{
    memset(r, 0, sizeof(*r));
    sv->st.accesses++;
    if (mv__sim_canon(va) != va) {
        r->kind = MV_SIM_GP_FAULT;
        r->addr = va;
        return r->kind;
    }
    const struct mv_vcpu_state *cs = &sv->v->state;
    uint64_t root = sync_root(sv, flags);
    if (sv->shadow) {
        /* A CR3 the engine has not loaded yet (changed behind our back): its trap. */
        if (!sv->sh_loaded || sv->sh_cr3 != cs->cr3) {
            mv_paddr_t sroot = 0;
            sv->st.exits++;
            mv__sim_engine_begin(sv);
            int rc = mv_shadow_set_cr3(sv->v, cs->cr3, &sroot);
            mv__sim_engine_end(sv);
            sv->sh_loaded = rc == 0;
            sv->sh_cr3 = cs->cr3;
            sv->sh_root = sroot;
            if (rc) {
                r->kind = MV_SIM_ENGINE_ERROR;
                r->rc = rc;
                r->addr = va;
                return r->kind;
            }
        }
        root = sv->sh_root;
    }
    struct sim_tlbe *e = mv__sim_tlb_find(sv, va);
    if (e) {
        bool ok = mv__sim_permits(e->flags, op, flags, cs->cr0, cs->cr4) &&
                  (op != MV_SIM_WRITE || (e->flags & TLBF_D)) &&
                  (!sv->hap || (e->ept & ept_need(op)));
        if (ok) {
            sv->st.tlb_hits++;
            unsigned size = (unsigned)((e - &sv->tlb.e[0][0][0]) / (SIM_TLB_SETS * SIM_TLB_WAYS));
            uint64_t off = va - mv__sim_tlbe_va(size, e);
            r->kind = MV_SIM_OK;
            r->mfn = e->mfn + (off >> MV_PAGE_SHIFT);
            r->addr = e->addr + off;
            r->order = e->gorder;
            return MV_SIM_OK;
        }
        e->valid = 0; /* not enough: the hardware walks again */
    }
    for (int tries = 0; tries < SIM_RETRIES; tries++) {
        memset(r, 0, sizeof(*r));
        if (walk(sv, root, va, op, flags, r) == WALK_DONE)
            return r->kind;
    }
    r->kind = MV_SIM_ENGINE_ERROR;
    r->rc = MV_EAGAIN; /* the engine said "retry" and never fixed it */
    return r->kind;
}

/* Guest code: requests are handled at entry and before every translation (threaded mode). */
uint32_t mv_sim_translate(mv_sim_vcpu_t *sv, uint64_t va, uint32_t op, uint32_t flags,
                          struct mv_sim_result *r)
{
    mv__sim_guest_enter(sv);
    mv__sim_poll(sv);
    uint32_t k = translate(sv, va, op, flags, r);
    mv__sim_guest_exit(sv);
    return k;
}

/* The whole copy is guest code: a shootdown waits for the page being copied. */
static uint32_t rw(mv_sim_vcpu_t *sv, uint64_t va, void *buf, size_t len, uint32_t op,
                   uint32_t flags, struct mv_sim_result *r)
{
    uint8_t *b = buf;
    while (len) {
        size_t chunk = MV_PAGE_SIZE - (va & 0xfff);
        if (chunk > len)
            chunk = len;
        uint32_t k = mv_sim_translate(sv, va, op, flags, r);
        if (k == MV_SIM_EMULATE && op == MV_SIM_WRITE) {
            /* The hypervisor's emulator completes the write (shadow paging). */
            mv__sim_engine_begin(sv);
            int rc = mv_shadow_emulate_write(sv->v, r->addr, b, chunk);
            mv__sim_engine_end(sv);
            sv->st.emulated_writes++;
            if (rc) {
                r->kind = MV_SIM_ENGINE_ERROR;
                r->rc = rc;
                return r->kind;
            }
        } else if (k != MV_SIM_OK) {
            return r->kind;
        } else {
            uint8_t *p = mv__sim_frame(sv->h, r->mfn) + (va & 0xfff);
            if (op == MV_SIM_WRITE)
                memcpy(p, b, chunk);
            else
                memcpy(b, p, chunk);
        }
        b += chunk;
        va += chunk;
        len -= chunk;
    }
    memset(r, 0, sizeof(*r));
    return MV_SIM_OK;
}

uint32_t mv_sim_rw(mv_sim_vcpu_t *sv, uint64_t va, void *buf, size_t len, uint32_t op,
                   uint32_t flags, struct mv_sim_result *r)
{
    mv__sim_guest_enter(sv);
    uint32_t k = rw(sv, va, buf, len, op, flags, r);
    mv__sim_guest_exit(sv);
    return k;
}

const char *mv_sim_kind_name(uint32_t kind)
{
    static const char *const names[MV_SIM_NR_KINDS] = {
        "ok", "page-fault", "gp-fault", "ept-mmio", "ept-hole", "ept-denied",
        "ept-misconfig", "bad-frame", "engine-error", "emulate"};
    return kind < MV_SIM_NR_KINDS ? names[kind] : "?";
}

bool mv_sim_same(const struct mv_sim_result *a, const struct mv_sim_result *b)
{
    uint32_t ka = a->kind == MV_SIM_EMULATE ? MV_SIM_OK : a->kind;
    uint32_t kb = b->kind == MV_SIM_EMULATE ? MV_SIM_OK : b->kind;
    if (ka != kb)
        return false;
    switch (ka) {
    case MV_SIM_OK:
        return a->mfn == b->mfn;
    case MV_SIM_PAGE_FAULT:
        return a->error_code == b->error_code;
    case MV_SIM_EPT_MMIO:
    case MV_SIM_EPT_HOLE:
    case MV_SIM_EPT_DENIED:
        return (a->addr >> MV_PAGE_SHIFT) == (b->addr >> MV_PAGE_SHIFT);
    case MV_SIM_ENGINE_ERROR:
        return a->rc == b->rc;
    default:
        return true;
    }
}

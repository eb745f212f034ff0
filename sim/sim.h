/*
 * sim/sim.h - the test bench's hardware: a vCPU with a software MMU, its TLB, the oracle,
 * and real guest-memory image import. Used by tests/, perf/ and tools/ (memvirt-sim); not
 * part of libmemvirt and never installed.
 *
 * The simulator owns the host it runs: mv_sim_create builds the posix platform, wraps it
 * (a copy of its struct with the tlb_flush hook replaced, as tests/harness.c does) and
 * creates the host on it. Domains are the engine's; mv_sim_attach gives every vCPU of a
 * domain a hardware vCPU (mv_sim_vcpu_t) that walks tables exactly as an x86-64 MMU does:
 *
 *  - PV:  the guest's machine-address tables from the vCPU's base pointer (the user one
 *         for user-mode accesses when the guest has set one);
 *  - HAP: a two-dimensional walk: every guest table entry is read at a guest-physical
 *         address translated through the EPT-format p2m tables from mv_p2m_root(); EPT
 *         violations go to mv_p2m_handle_violation and the access is retried when the
 *         engine fixed it. Setting an A/D bit is a write: it needs EPT write permission
 *         (the engine's write-fault path marks the page dirty while logging).
 *  - shadow: the engine's shadow tables (guest virtual -> machine) from the root
 *         mv_shadow_set_cr3 gave for the guest's CR3, loaded again whenever the CR3
 *         changes; every #PF goes to mv_shadow_page_fault (the hypervisor's trap): fixed
 *         (retried), injected (the guest's #PF with the engine's error code), emulate (a
 *         write to a guest page-table frame: mv_sim_rw hands the bytes to
 *         mv_shadow_emulate_write, mv_sim_translate reports MV_SIM_EMULATE) or mmio.
 *         INVLPG and TLB flushes of the guest are trapped too (mv_shadow_invlpg,
 *         mv_shadow_flush). The TLB records the guest's own walk of each entry (read by
 *         gfn) so that the TLB check can tell legal stale entries from engine bugs.
 *
 * The TLB is set-associative, one array per page size, tagged by the linear address; a
 * hit serves the access when the cached rights allow it (and, for a write, the cached
 * entry is dirty), otherwise the entry is dropped and the walk redone. Invalidation: the
 * guest's INVLPG and CR3 writes (mv_sim_invlpg, mv_sim_set_cr3; global entries survive
 * CR3 writes when CR4.PGE is set) and the engine's flush hook. A change of the vCPU's root
 * (CR3 or PV base pointer) or control registers made behind the simulator's back is seen
 * at the next access and treated as the corresponding CR write.
 *
 * The oracle (mv_sim_oracle) is a separate, deliberately simple walker: HVM guest tables
 * by gfn through mv_p2m_lookup, PV machine tables with every frame checked against the
 * domain, the p2m and the m2p. It predicts the outcome of an access after the engine has
 * handled what it handles (a write to a log-dirty page reaches its frame). It is valid
 * where x86 says translations must agree: after the guest's own invalidations.
 * mv_sim_tlb_check tells legal stale TLB entries (the guest changed a table entry on the
 * entry's walk and has not flushed yet) from bugs (rights or frame changed underneath by
 * the engine without a flush, or a frame that left the domain or changed type).
 *
 * Concurrency: by default one thread drives a simulator; many vCPUs are interleaved on it
 * deterministically, and the flush hook invalidates the named TLBs at once. In threaded
 * mode (mv_sim_set_threaded) each vCPU is driven by one thread of its own, which alone
 * touches its TLB: the flush hook posts a request to each target and waits only for the
 * targets running guest code (inside mv_sim_translate / mv_sim_rw and not in an engine
 * call), until they handle it; the others handle it before they next run guest code
 * (KVM's request pattern). Shootdowns thus never wait for a vCPU that is inside the
 * engine or blocked. Attach and detach only while no vCPU thread runs.
 */
#ifndef MEMVIRT_SIM_H
#define MEMVIRT_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <memvirt/memvirt.h>

typedef struct mv_sim mv_sim_t;
typedef struct mv_sim_vcpu mv_sim_vcpu_t;

/* ---- The simulated machine --------------------------------------------------------------- */

struct mv_sim_config {
    size_t size;          /* sizeof(struct mv_sim_config) */
    uint64_t mem_bytes;   /* machine memory */
    const char *topology; /* posix topology description; NULL: one node */
};

/* 0, MV_EINVAL, or what the platform or host creation returned. */
int mv_sim_create(const struct mv_sim_config *cfg, mv_sim_t **out);
/* Detaches every vCPU and destroys the host and the platform (domains must be gone). */
void mv_sim_destroy(mv_sim_t *s);
mv_host_t *mv_sim_host(const mv_sim_t *s);

/* Test hook: while on, the flush hook counts requests and drops them (a broken flush). */
void mv_sim_drop_flushes(mv_sim_t *s, bool on);
/* Flush requests the engine made through the hook so far. */
uint64_t mv_sim_flush_requests(const mv_sim_t *s);
/* Threaded mode on or off (only while no vCPU thread runs). */
void mv_sim_set_threaded(mv_sim_t *s, bool on);
bool mv_sim_threaded(const mv_sim_t *s);
/* Threaded: flush requests (engine's or guest's) that waited for a vCPU in guest code. */
uint64_t mv_sim_flush_waits(const mv_sim_t *s);
/*
 * A flush of sv's whole TLB asked from another vCPU's thread (the guest's shootdown IPI):
 * threaded, posted as a request and waited for while sv runs guest code; else done at once.
 */
void mv_sim_vcpu_kick_flush(mv_sim_vcpu_t *sv);

/* Hardware vCPUs for every vCPU of d. MV_EEXIST attached already, MV_ENOMEM. */
int mv_sim_attach(mv_sim_t *s, mv_domain_t *d);
/* Forget d's hardware vCPUs (before or right after destroying d). MV_ENOENT. */
int mv_sim_detach(mv_sim_t *s, mv_domain_t *d);
mv_sim_vcpu_t *mv_sim_vcpu(mv_sim_t *s, mv_domain_t *d, uint32_t idx);
mv_vcpu_t *mv_sim_vcpu_engine(const mv_sim_vcpu_t *sv);

/* ---- Accesses ---------------------------------------------------------------------------- */

enum mv_sim_op { MV_SIM_READ = 0, MV_SIM_WRITE = 1, MV_SIM_FETCH = 2 };

/* Access attributes */
#define MV_SIM_USER 0x1u     /* CPL 3 */
#define MV_SIM_AC 0x2u       /* EFLAGS.AC set (SMAP lets explicit supervisor accesses through) */
#define MV_SIM_IMPLICIT 0x4u /* implicit supervisor access (descriptor tables, ...): never user */

/* What an access ends in. */
enum mv_sim_kind {
    MV_SIM_OK = 0,          /* the frame was reached */
    MV_SIM_PAGE_FAULT,      /* #PF injected into the guest, with error_code */
    MV_SIM_GP_FAULT,        /* #GP: non-canonical address */
    MV_SIM_EPT_MMIO,        /* device memory: the access is emulated (gpa) */
    MV_SIM_EPT_HOLE,        /* nothing mapped at gpa: the guest touched a hole */
    MV_SIM_EPT_DENIED,      /* the p2m forbids it (e.g. a write to ram_ro) */
    MV_SIM_EPT_MISCONFIG,   /* a malformed EPT entry: an engine bug */
    MV_SIM_BAD_FRAME,       /* a frame outside machine memory, or (oracle) not the domain's */
    MV_SIM_ENGINE_ERROR,    /* the engine's fault handler failed (rc) or never converged */
    MV_SIM_EMULATE,         /* shadow: a write the hypervisor emulates (addr: gpa, mfn) */
    MV_SIM_NR_KINDS
};

/* Page-fault error code bits */
#define MV_SIM_PF_P 0x1u
#define MV_SIM_PF_W 0x2u
#define MV_SIM_PF_U 0x4u
#define MV_SIM_PF_RSVD 0x8u
#define MV_SIM_PF_ID 0x10u

struct mv_sim_result {
    uint32_t kind;       /* enum mv_sim_kind */
    uint32_t error_code; /* MV_SIM_PAGE_FAULT */
    int rc;              /* MV_SIM_ENGINE_ERROR: the engine's code */
    uint32_t order;      /* MV_SIM_OK: order of the guest's leaf (0, 9, 18) */
    mv_mfn_t mfn;        /* MV_SIM_OK: the 4 KiB machine frame reached */
    uint64_t addr;       /* HVM: guest-physical address reached or faulting; PV: machine */
};

const char *mv_sim_kind_name(uint32_t kind);
/*
 * Same outcome: kind, and the frame (OK), error code (#PF), page (EPT) or code (error). An
 * emulated write (MV_SIM_EMULATE) is the same as reaching its frame (MV_SIM_OK).
 */
bool mv_sim_same(const struct mv_sim_result *a, const struct mv_sim_result *b);

/* Translate va for an access through the TLB and the tables. Returns r->kind. */
uint32_t mv_sim_translate(mv_sim_vcpu_t *sv, uint64_t va, uint32_t op, uint32_t flags,
                          struct mv_sim_result *r);
/*
 * Copy len bytes from (READ, FETCH) or to (WRITE) guest-linear memory through the vCPU,
 * page by page. MV_SIM_OK, or the kind that stopped it (*r tells more; bytes before it
 * were copied).
 */
uint32_t mv_sim_rw(mv_sim_vcpu_t *sv, uint64_t va, void *buf, size_t len, uint32_t op,
                   uint32_t flags, struct mv_sim_result *r);

/* The guest's instructions. */
void mv_sim_invlpg(mv_sim_vcpu_t *sv, uint64_t va);
/*
 * HVM: MOV to CR3 (through mv_vcpu_set_state; under shadow paging also mv_shadow_set_cr3);
 * non-global entries go. 0 or its error.
 */
int mv_sim_set_cr3(mv_sim_vcpu_t *sv, uint64_t cr3);
/* Every entry goes (as toggling CR4.PGE does). */
void mv_sim_flush_tlb(mv_sim_vcpu_t *sv);
/* Test hook for PV: walk from this L4 frame instead of the base pointers (MV_INVALID_MFN: off). */
void mv_sim_set_root_override(mv_sim_vcpu_t *sv, mv_mfn_t l4);

struct mv_sim_vcpu_stats {
    uint64_t accesses, tlb_hits, walks, ept_violations, page_faults, ad_updates;
    uint64_t flushes_one, flushes_linear, flushes_gphys;
    uint64_t shadow_faults, emulated_writes; /* shadow: traps to the engine */
    uint64_t stale_uses; /* shadow: accesses served by an out-of-sync entry the guest unmapped */
    /* VM exits a real vCPU would take: EPT violations (HAP); page faults, CR3 loads,
     * INVLPG and flushes trapped to the shadow module (shadow). */
    uint64_t exits;
    uint64_t engine_ns; /* time spent in the engine's handlers of those exits */
};
void mv_sim_vcpu_stats(const mv_sim_vcpu_t *sv, struct mv_sim_vcpu_stats *st);

/* ---- The oracle ---------------------------------------------------------------------------- */

/* The outcome the access must have (current tables, after the engine's own handling). */
uint32_t mv_sim_oracle(mv_sim_vcpu_t *sv, uint64_t va, uint32_t op, uint32_t flags,
                       struct mv_sim_result *r);

/*
 * Read, write (the bytes read written back) and fetch at va through the vCPU and through
 * the oracle; returns the number of the three that differ (0..3) and, when a pair differs,
 * the first one in vcpu[0]/oracle[0] (either may be NULL).
 */
unsigned mv_sim_verify_page(mv_sim_vcpu_t *sv, uint64_t va, uint32_t flags,
                            struct mv_sim_result *vcpu, struct mv_sim_result *oracle);

struct mv_sim_tlb_report {
    uint64_t entries;     /* valid entries checked */
    uint64_t stale_legal; /* differ from the tables, but the guest changed their walk */
    uint64_t violations;  /* differ with the guest's tables unchanged, or frame misuse */
    uint64_t first_va;    /* of the first violation */
    const char *first_what;
};
/* Check every TLB entry of the vCPU against the tables. 0, or MV_EUCLEAN on violations. */
int mv_sim_tlb_check(mv_sim_vcpu_t *sv, struct mv_sim_tlb_report *rep);

/*
 * Walk the guest tables of an HVM domain from root_gfn as the oracle does, rights
 * ignored: 0 with the gfn va maps to, MV_ENOENT not mapped, MV_EFAULT a table outside RAM.
 */
int mv_sim_gva_to_gfn(mv_domain_t *d, mv_gfn_t root_gfn, uint64_t va, mv_gfn_t *gfn);

/* ---- Real images --------------------------------------------------------------------------- */

/* Page-table statistics with the counting rules of shared/corpus/README.md. */
struct mv_sim_image_stats {
    uint64_t bytes;      /* guest RAM (gpa 0 .. bytes) */
    uint64_t roots;
    uint64_t tables[4];  /* [0] L1 .. [3] L4 */
    uint64_t leaves[3];  /* [0] 4 KiB, [1] 2 MiB, [2] 1 GiB */
    uint64_t pages4k;
};

struct mv_sim_image {
    mv_domain_t *d;
    uint64_t pages;       /* guest RAM frames, gfn 0 .. pages - 1 */
    uint64_t cr3;         /* as masked */
    uint64_t nr_roots;
    mv_gfn_t *roots;      /* ascending, the CR3 frame among them */
    struct mv_sim_image_stats st;
    uint8_t **va;         /* [pages] host address of each guest frame */
};

struct mv_sim_image_config {
    size_t size;          /* sizeof(struct mv_sim_image_config) */
    const char *path;     /* raw dump, or zstd-compressed (detected by its magic) */
    uint64_t cr3;         /* low 12 bits and bit 63 are masked */
    uint32_t domid;
    uint32_t paging;      /* MV_PAGING_SHADOW or MV_PAGING_HAP; 0: shadow, the default */
    uint32_t phys_bits;   /* 0: 40 */
    bool gbpages;         /* offer 1 GiB pages to the guest */
    uint64_t shadow_pool_pages; /* shadow: a pool of this fixed size (0: self-sizing) */
    bool shadow_sync;   /* shadow: no out-of-sync L1s (MV_DOMF_SHADOW_SYNC) */
};

/*
 * Guest RAM bytes an image holds (the zstd header's content size, or a counting pass when
 * the header does not say). 0 or an error with a message in err.
 */
int mv_sim_image_size(const char *path, uint64_t *bytes, char *err, size_t errlen);
/*
 * Build an HVM domain holding the image, attached to the simulator, with the control state
 * of a 64-bit Linux guest; find the roots and compute the statistics. On error nothing is
 * left behind and err says why: MV_EIO unreadable, MV_EINVAL malformed image or CR3,
 * MV_ENOMEM, or the engine's error.
 */
int mv_sim_image_import(mv_sim_t *s, const struct mv_sim_image_config *cfg,
                        struct mv_sim_image **out, char *err, size_t errlen);
/* Detach, destroy the domain, free. */
void mv_sim_image_free(mv_sim_t *s, struct mv_sim_image *img);

/* Progress callback: done of total pages; return non-zero to stop. */
typedef int (*mv_sim_progress_fn)(void *ctx, uint64_t done, uint64_t total);
/*
 * --verify: every mapped 4 KiB page of every root that lies in guest RAM, read, written
 * back and fetched through the vCPU and the oracle. *verified pages, *mismatches pages with
 * at least one differing access. 0, or MV_EAGAIN when the callback stopped it.
 */
int mv_sim_image_verify(mv_sim_t *s, struct mv_sim_image *img, mv_sim_progress_fn cb,
                        void *ctx, uint64_t *verified, uint64_t *mismatches);
/*
 * The corpus's guest-side listing (MAP pid vaddr pfn perms): pair each process with the
 * root that translates most of its lines, count the lines that translate exactly.
 */
int mv_sim_image_check_maps(const struct mv_sim_image *img, const char *path, uint64_t *ok,
                            uint64_t *total, char *err, size_t errlen);

/* ---- The guest OS model (guest.c) ------------------------------------------------------------ */

/*
 * A guest kernel on a domain of its own: a guest-physical page allocator over the domain's
 * RAM, processes with address spaces of VMAs, and real x86-64 4-level tables in guest
 * memory. PV guests write their tables with mv_pv_mmu_update batches (machine addresses
 * learned with mv_p2m_lookup), pin each process's L4, switch with MV_PV_NEW_BASEPTR and
 * flush with the mmuext ops; HVM guests (HAP or shadow) store every byte, page-table entries
 * included, through a vCPU and the kernel's direct map (2 MiB global leaves at
 * MV_SIM_DIRECT_MAP, written once by the boot loader before paging is on). Changes that
 * reduce a mapping are gathered (PTE writes batched, frames freed only after the
 * shootdown), as Linux's mmu_gather does; the shootdown invalidates on every vCPU running
 * the process. With `check`, every invalidated page is verified on every target vCPU
 * through the vCPU and the oracle, and each target's TLB is checked.
 *
 * Page content is named by a 64-bit id (0: zero page; pool ids: the same bytes in every
 * guest; unique ids); the model remembers each page's id per process and `read` compares
 * the bytes it gets.
 *
 * With MEMVIRT_SIM_DEBUG set in the environment, each oracle mismatch and content error
 * is described on stderr (the counts are kept either way).
 *
 * Threads: every call may come from the thread of the vCPU it names; a mutex of the model
 * guards its structures (allocator, processes, tables edits), and user accesses run
 * without it, as guest code. With `threaded`, a process runs on one vCPU at a time:
 * switching to, forking, exec'ing or killing a process that another vCPU runs is refused
 * with MV_EBUSY, and a shootdown reaches another vCPU as a flush request
 * (mv_sim_vcpu_kick_flush).
 */
typedef struct mv_sim_guest mv_sim_guest_t;

#define MV_SIM_DIRECT_MAP 0xffff888000000000ull

/* mmap prot bits */
#define MV_SIM_PROT_R 0x1u
#define MV_SIM_PROT_W 0x2u
#define MV_SIM_PROT_X 0x4u

enum mv_sim_guest_op {
    MV_SIM_GOP_MMAP = 0, MV_SIM_GOP_MUNMAP, MV_SIM_GOP_MPROTECT, MV_SIM_GOP_TOUCH,
    MV_SIM_GOP_READ, MV_SIM_GOP_WRITE, MV_SIM_GOP_FORK, MV_SIM_GOP_EXEC, MV_SIM_GOP_EXIT,
    MV_SIM_GOP_SWITCH, MV_SIM_GOP_SHOOTDOWN, MV_SIM_GOP_NR
};
enum mv_sim_guest_fault {
    MV_SIM_GF_DEMAND = 0, /* not present: a page allocated and filled */
    MV_SIM_GF_COW,        /* write to a shared read-only page: copied */
    MV_SIM_GF_REUSE,      /* write to a read-only page the process alone holds: made writable */
    MV_SIM_GF_SEGV,       /* no VMA, or the VMA forbids it */
    MV_SIM_GF_NR
};

struct mv_sim_guest_config {
    size_t size;        /* sizeof(struct mv_sim_guest_config) */
    uint32_t domid;
    uint32_t nr_vcpus;
    bool hvm;           /* HVM (shadow paging unless `hap`); else PV */
    uint64_t mem_pages; /* guest RAM, a multiple of 512 */
    uint64_t seed;
    uint32_t zero_pct;  /* content mix of new pages: zero, pool, the rest unique */
    uint32_t pool_pct;
    uint32_t pool_pages; /* size of the shared pool (0: 256) */
    bool check;         /* oracle and TLB check at every invalidation */
    bool threaded;      /* vCPUs driven by threads of their own (see above) */
    bool hap;           /* HVM with nested paging instead of shadow paging */
    uint64_t shadow_pool_pages; /* shadow: a pool of this fixed size (0: self-sizing) */
    bool shadow_sync;   /* shadow: no out-of-sync L1s (MV_DOMF_SHADOW_SYNC) */
};

struct mv_sim_guest_stats {
    uint64_t ops[MV_SIM_GOP_NR];
    uint64_t faults[MV_SIM_GF_NR];
    uint64_t pages_total, pages_free, page_tables, processes;
    uint64_t pages_zero, pages_pool, pages_unique; /* content of pages filled */
    uint64_t checks, mismatches, tlb_violations, content_errors;
    uint64_t errors;    /* engine calls that failed (last_error: the last code) */
    int last_error;
};

const char *mv_sim_guest_op_name(unsigned op);
const char *mv_sim_guest_fault_name(unsigned f);

/* Create the domain, populate it, attach it, boot the kernel. 0, MV_EINVAL or the engine's. */
int mv_sim_guest_create(mv_sim_t *s, const struct mv_sim_guest_config *cfg,
                        mv_sim_guest_t **out);
/* Destroy the domain (detached) and free the model. */
void mv_sim_guest_destroy(mv_sim_guest_t *g);
mv_domain_t *mv_sim_guest_domain(const mv_sim_guest_t *g);
void mv_sim_guest_stats(const mv_sim_guest_t *g, struct mv_sim_guest_stats *st);

/* Processes are small integers. A new one has an empty address space. */
int mv_sim_guest_spawn(mv_sim_guest_t *g, uint32_t vcpu, int *pid);
int mv_sim_guest_fork(mv_sim_guest_t *g, uint32_t vcpu, int pid, int *child);
int mv_sim_guest_exec(mv_sim_guest_t *g, uint32_t vcpu, int pid);
int mv_sim_guest_exit(mv_sim_guest_t *g, uint32_t vcpu, int pid);
/* Context switch: vcpu runs pid (-1: the idle kernel tables). */
int mv_sim_guest_switch(mv_sim_guest_t *g, uint32_t vcpu, int pid);
/* The process vcpu runs, or -1. */
int mv_sim_guest_current(const mv_sim_guest_t *g, uint32_t vcpu);
bool mv_sim_guest_alive(const mv_sim_guest_t *g, int pid);

/*
 * mmap in the process vcpu runs: anonymous (file 0) or a private file mapping whose page i
 * holds content id `file_ids(file, i)` (pool content: the same in every guest). *va: the
 * start. munmap and mprotect take a whole mapping.
 */
int mv_sim_guest_mmap(mv_sim_guest_t *g, uint32_t vcpu, uint64_t pages, uint32_t prot,
                      uint64_t file, uint64_t *va);
int mv_sim_guest_munmap(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va);
int mv_sim_guest_mprotect(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va, uint32_t prot);
/* Mappings of the current process: the start and pages of mapping i; MV_ENOENT past the end. */
int mv_sim_guest_mapping(const mv_sim_guest_t *g, uint32_t vcpu, uint32_t i, uint64_t *va,
                         uint64_t *pages, uint32_t *prot);
/*
 * User accesses of the current process at va's page, through the vCPU, the guest's own
 * fault handling included: touch reads 8 bytes, read the whole page (compared with what
 * the model expects; a difference counts as content_errors and returns MV_EUCLEAN), write
 * fills it with new unique content. MV_EFAULT: SIGSEGV (counted, nothing changed).
 */
int mv_sim_guest_touch(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va);
int mv_sim_guest_read(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va);
int mv_sim_guest_write(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va);
/* Read 8 bytes at va (tests), faults handled as for touch. */
int mv_sim_guest_load(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va, uint64_t *val);
/* Shootdown of the whole address space of the current process on every vCPU running it. */
int mv_sim_guest_shootdown(mv_sim_guest_t *g, uint32_t vcpu);

/* ---- Workloads (workload.c) ------------------------------------------------------------------- */

/* A workload's knobs; rates are per mille of steps. */
struct mv_sim_workload_params {
    uint64_t footprint;     /* pages mapped per process at most */
    uint32_t working_set;   /* percent of each mapping the accesses go to */
    uint32_t dirty;         /* percent of accesses that write */
    uint32_t fork_rate;     /* forks (a child that often execs and exits soon) */
    uint32_t mmap_rate;     /* mmap, and munmap when over the footprint */
    uint32_t mprotect_rate;
    uint32_t switch_rate;   /* context switches */
    uint32_t file_pct;      /* percent of mmaps that map a file */
    uint32_t zero_pct, pool_pct; /* content mix of new pages */
    uint32_t max_procs;
};

/* The presets: idle, forky, mmap-churn, compile-like, memory-hog. MV_ENOENT unknown name. */
int mv_sim_workload_preset(const char *name, struct mv_sim_workload_params *p);
/* The name of preset i, or NULL past the end. */
const char *mv_sim_workload_name(unsigned i);

struct mv_sim_run_config {
    size_t size;          /* sizeof(struct mv_sim_run_config) */
    const char *workload; /* a preset */
    uint32_t domains, vcpus;
    uint64_t seed;
    bool hvm;             /* HVM (shadow paging unless `hap`); else PV */
    bool check;           /* the oracle at every invalidation */
    uint64_t mem_pages;   /* per domain; 0: from the footprint */
    bool threaded;        /* one thread per vCPU (puts the simulator in threaded mode) */
    bool hap;             /* HVM with nested paging instead of shadow paging */
    uint64_t shadow_pool_pages; /* shadow: each domain's pool, fixed (0: self-sizing) */
    bool shadow_sync;     /* shadow: no out-of-sync L1s (MV_DOMF_SHADOW_SYNC) */
};

typedef struct mv_sim_run mv_sim_run_t;

/* Domains 1..N as guests of the simulator. 0, MV_EINVAL, MV_ENOENT unknown preset, or an error. */
int mv_sim_run_create(mv_sim_t *s, const struct mv_sim_run_config *cfg, mv_sim_run_t **out);
/*
 * Run n steps, interleaved deterministically: step k runs vCPU (k / domains) % vcpus of
 * domain k % domains. 0, or the first unexpected error (guest SIGSEGVs and out-of-memory
 * kills are part of the workload). Threaded: the n steps are shared out among one thread
 * per vCPU, each with a generator of its own, and run concurrently; no determinism.
 */
int mv_sim_run_steps(mv_sim_run_t *r, uint64_t n);
mv_sim_guest_t *mv_sim_run_guest(const mv_sim_run_t *r, uint32_t i);
/* Out-of-memory kills in domain i. */
uint64_t mv_sim_run_oom(const mv_sim_run_t *r, uint32_t i);
void mv_sim_run_destroy(mv_sim_run_t *r);

#endif

/*
 * sim/image.c - real guest-memory images: import, page-table statistics, verification.
 *
 * An image is a raw dump of guest-physical memory (file offset == gpa), plain or zstd
 * compressed (recognised by the zstd magic; read as a stream with libzstd, so a 256 MiB
 * guest never sits in memory twice). Its size must be a whole number of 4 KiB pages.
 * Import makes an HVM domain whose RAM is exactly the image: populated in 2 MiB extents
 * where it can be, filled frame by frame (all-zero pages stay as populate left them, known
 * zero), with the control state of a 64-bit Linux guest.
 *
 * Statistics follow shared/corpus/README.md's rules to the letter:
 *  - roots: every frame whose entries 256..511 equal those of the CR3 frame;
 *  - tables: distinct frames per level reachable from the roots through present non-leaf
 *    entries (an L4 entry is never a leaf; PS makes L3 and L2 entries leaves), only frames
 *    inside guest RAM;
 *  - leaves: present L1 entries and PS entries at L2 and L3 of those tables;
 *  - pages4k: per root, the 4 KiB pages it maps whose frame is inside guest RAM, summed.
 * Nothing here knows any particular image.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zstd.h>

#include "sim-internal.h"

#define CHUNK (2u << 20)  /* one 2 MiB extent of guest RAM at a time */
#define L2_PAGES 512u

static void seterr(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t len, const char *fmt, ...)
{
    if (!err || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* ---- Reading: raw or zstd, as one stream of bytes -------------------------------------- */

struct reader {
    FILE *f;
    bool zstd;
    ZSTD_DCtx *dctx;
    uint8_t *in;
    size_t in_cap;
    ZSTD_inBuffer ib;
    bool eof;
    size_t last_ret;  /* ZSTD_decompressStream's last hint: 0 at a frame's end */
};

static bool is_zstd_magic(const uint8_t *b, size_t n)
{
    return n >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd;
}

static int reader_open(struct reader *rd, const char *path, char *err, size_t errlen)
{
    memset(rd, 0, sizeof(*rd));
    rd->f = fopen(path, "rb");
    if (!rd->f) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return MV_EIO;
    }
    uint8_t magic[4];
    size_t n = fread(magic, 1, sizeof(magic), rd->f);
    rewind(rd->f);
    rd->zstd = is_zstd_magic(magic, n);
    if (rd->zstd) {
        rd->dctx = ZSTD_createDCtx();
        rd->in_cap = ZSTD_DStreamInSize();
        rd->in = malloc(rd->in_cap);
        if (!rd->dctx || !rd->in) {
            seterr(err, errlen, "%s: out of memory", path);
            return MV_ENOMEM;
        }
        rd->ib = (ZSTD_inBuffer){rd->in, 0, 0};
        rd->last_ret = 0;
    }
    return 0;
}

static void reader_close(struct reader *rd)
{
    if (rd->f)
        fclose(rd->f);
    ZSTD_freeDCtx(rd->dctx);
    free(rd->in);
    memset(rd, 0, sizeof(*rd));
}

/* Up to len bytes; *got 0 at the end. MV_EIO with a message on read or format errors. */
static int reader_read(struct reader *rd, uint8_t *buf, size_t len, size_t *got,
                       const char *path, char *err, size_t errlen)
{
    *got = 0;
    if (!rd->zstd) {
        size_t n = fread(buf, 1, len, rd->f);
        if (n < len && ferror(rd->f)) {
            seterr(err, errlen, "%s: read error", path);
            return MV_EIO;
        }
        *got = n;
        return 0;
    }
    ZSTD_outBuffer ob = {buf, len, 0};
    while (ob.pos < ob.size) {
        if (rd->ib.pos == rd->ib.size) {
            if (rd->eof)
                break;
            size_t n = fread(rd->in, 1, rd->in_cap, rd->f);
            if (n == 0) {
                if (ferror(rd->f)) {
                    seterr(err, errlen, "%s: read error", path);
                    return MV_EIO;
                }
                rd->eof = true;
                if (rd->last_ret != 0) {
                    seterr(err, errlen, "%s: truncated zstd stream", path);
                    return MV_EIO;
                }
                break;
            }
            rd->ib = (ZSTD_inBuffer){rd->in, n, 0};
        }
        size_t ret = ZSTD_decompressStream(rd->dctx, &ob, &rd->ib);
        if (ZSTD_isError(ret)) {
            seterr(err, errlen, "%s: zstd: %s", path, ZSTD_getErrorName(ret));
            return MV_EIO;
        }
        rd->last_ret = ret;
    }
    *got = ob.pos;
    return 0;
}

int mv_sim_image_size(const char *path, uint64_t *bytes, char *err, size_t errlen)
{
    struct reader rd;
    int rc = reader_open(&rd, path, err, errlen);
    if (rc) {
        reader_close(&rd);
        return rc;
    }
    if (!rd.zstd) {
        struct stat sb;
        if (fstat(fileno(rd.f), &sb) != 0) {
            seterr(err, errlen, "%s: %s", path, strerror(errno));
            rc = MV_EIO;
        }
        *bytes = (uint64_t)sb.st_size;
        reader_close(&rd);
        return rc;
    }
    /* The first frame's header, when it states the content size and the file holds one
     * frame; otherwise a counting pass. */
    uint8_t hdr[18]; /* ZSTD_FRAMEHEADERSIZE_MAX (a static-linking-only name) */
    size_t n = fread(hdr, 1, sizeof(hdr), rd.f);
    unsigned long long cs = ZSTD_getFrameContentSize(hdr, n);
    rewind(rd.f);
    if (cs != ZSTD_CONTENTSIZE_UNKNOWN && cs != ZSTD_CONTENTSIZE_ERROR) {
        *bytes = cs; /* checked against what the stream really holds during import */
        reader_close(&rd);
        return 0;
    }
    uint8_t *buf = malloc(CHUNK);
    uint64_t total = 0;
    size_t got;
    if (!buf)
        rc = MV_ENOMEM;
    while (!rc && !(rc = reader_read(&rd, buf, CHUNK, &got, path, err, errlen)) && got)
        total += got;
    free(buf);
    reader_close(&rd);
    *bytes = total;
    return rc;
}

/* ---- Import --------------------------------------------------------------------------------- */

static bool page_is_zero(const uint8_t *p)
{
    const uint64_t *q = (const uint64_t *)(const void *)p;
    for (unsigned i = 0; i < MV_PAGE_SIZE / 8; i += 4)
        if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
            return false;
    return true;
}

static int populate_one(mv_domain_t *d, mv_gfn_t gfn, unsigned order)
{
    uint64_t done;
    int rc;
    do
        rc = mv_populate_physmap(d, &gfn, 1, order, MV_NODE_ANY, &done);
    while (rc == MV_EAGAIN && !done);
    return rc == MV_EAGAIN ? 0 : rc;
}

static int populate_range(mv_domain_t *d, mv_gfn_t first, uint64_t n)
{
    if (n == L2_PAGES && !(first & (L2_PAGES - 1)))
        return populate_one(d, first, 9);
    int rc = 0;
    for (uint64_t i = 0; i < n && !rc; i++)
        rc = populate_one(d, first + i, 0);
    return rc;
}

static void destroy_domain(mv_domain_t *d)
{
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
}

static int fill(mv_sim_t *s, struct mv_sim_image *img, const char *path, uint64_t bytes,
                char *err, size_t errlen)
{
    struct reader rd;
    uint8_t *buf = malloc(CHUNK);
    int rc = buf ? reader_open(&rd, path, err, errlen) : MV_ENOMEM;
    if (!buf)
        seterr(err, errlen, "out of memory");
    for (uint64_t off = 0; !rc && off < bytes; off += CHUNK) {
        size_t want = bytes - off < CHUNK ? (size_t)(bytes - off) : CHUNK, got;
        if ((rc = reader_read(&rd, buf, want, &got, path, err, errlen)))
            break;
        if (got < want) {
            seterr(err, errlen, "%s: image ends at byte %llu, its header said %llu", path,
                   (unsigned long long)(off + got), (unsigned long long)bytes);
            rc = MV_EINVAL;
            break;
        }
        mv_gfn_t first = off >> MV_PAGE_SHIFT;
        uint64_t n = want >> MV_PAGE_SHIFT;
        if ((rc = populate_range(img->d, first, n))) {
            seterr(err, errlen, "%s: populating guest RAM at gfn %#llx: %s", path,
                   (unsigned long long)first, mv_strerror_name(rc));
            break;
        }
        for (uint64_t i = 0; i < n; i++) {
            struct mv_p2m_entry pe;
            if ((rc = mv_p2m_lookup(img->d, first + i, &pe)) || pe.type != MV_P2M_RAM_RW) {
                seterr(err, errlen, "gfn %#llx not populated", (unsigned long long)(first + i));
                rc = rc ? rc : MV_ENOMEM;
                break;
            }
            img->va[first + i] = mv_frame_va(s->h, pe.mfn);
            const uint8_t *src = buf + (i << MV_PAGE_SHIFT);
            if (!page_is_zero(src))
                memcpy(img->va[first + i], src, MV_PAGE_SIZE);
        }
    }
    if (!rc) {
        size_t got = 0;
        uint8_t extra;
        rc = reader_read(&rd, &extra, 1, &got, path, err, errlen);
        if (!rc && got) {
            seterr(err, errlen, "%s: image is longer than %llu bytes", path,
                   (unsigned long long)bytes);
            rc = MV_EINVAL;
        }
    }
    if (buf)
        reader_close(&rd);
    free(buf);
    return rc;
}

/* ---- Statistics ------------------------------------------------------------------------------ */

struct counter {
    const struct mv_sim_image *img;
    uint8_t *seen[4];     /* [level-1][gfn]: table counted at that level */
    uint64_t *memo[4];    /* [level-1][gfn]: 4 KiB pages in RAM its subtree maps */
    struct mv_sim_image_stats *st;
};

static uint64_t in_ram(const struct mv_sim_image *img, uint64_t first_gfn, uint64_t n)
{
    if (first_gfn >= img->pages)
        return 0;
    return img->pages - first_gfn < n ? img->pages - first_gfn : n;
}

/* Pages (in RAM) mapped below the table at `level` (4..1); counts tables and leaves once. */
static uint64_t count_table(struct counter *c, int level, mv_gfn_t gfn)
{
    if (c->seen[level - 1][gfn])
        return c->memo[level - 1][gfn];
    c->seen[level - 1][gfn] = 1;
    c->st->tables[level - 1]++;
    const uint64_t *t = (const uint64_t *)(const void *)c->img->va[gfn];
    uint64_t pages = 0;
    for (unsigned i = 0; i < 512; i++) {
        uint64_t e = t[i];
        if (!(e & X86_P))
            continue;
        if (level == 1) {
            c->st->leaves[0]++;
            pages += in_ram(c->img, (e & X86_ADDR) >> MV_PAGE_SHIFT, 1);
        } else if (level != 4 && (e & X86_PS)) {
            unsigned order = 9 * (unsigned)(level - 1);
            c->st->leaves[level - 1]++;
            uint64_t base = (e & X86_ADDR) >> MV_PAGE_SHIFT & ~((1ull << order) - 1);
            pages += in_ram(c->img, base, 1ull << order);
        } else {
            mv_gfn_t child = (e & X86_ADDR) >> MV_PAGE_SHIFT;
            if (child < c->img->pages)
                pages += count_table(c, level - 1, child);
        }
    }
    c->memo[level - 1][gfn] = pages;
    return pages;
}

static int compute_stats(struct mv_sim_image *img)
{
    mv_gfn_t cr3 = img->cr3 >> MV_PAGE_SHIFT;
    const uint8_t *top = img->va[cr3] + 256 * 8;
    uint64_t nr = 0;
    for (mv_gfn_t g = 0; g < img->pages; g++)
        if (!memcmp(img->va[g] + 256 * 8, top, 256 * 8))
            nr++;
    img->roots = malloc(nr * sizeof(*img->roots));
    if (!img->roots)
        return MV_ENOMEM;
    img->nr_roots = 0;
    for (mv_gfn_t g = 0; g < img->pages; g++)
        if (!memcmp(img->va[g] + 256 * 8, top, 256 * 8))
            img->roots[img->nr_roots++] = g;
    img->st.roots = img->nr_roots;

    struct counter c = {.img = img, .st = &img->st};
    int rc = 0;
    for (int l = 0; l < 4 && !rc; l++) {
        c.seen[l] = calloc(img->pages, 1);
        c.memo[l] = calloc(img->pages, sizeof(uint64_t));
        if (!c.seen[l] || !c.memo[l])
            rc = MV_ENOMEM;
    }
    for (uint64_t i = 0; !rc && i < img->nr_roots; i++)
        img->st.pages4k += count_table(&c, 4, img->roots[i]);
    for (int l = 0; l < 4; l++) {
        free(c.seen[l]);
        free(c.memo[l]);
    }
    return rc;
}

/* ---- Import entry point ------------------------------------------------------------------- */

void mv_sim_image_free(mv_sim_t *s, struct mv_sim_image *img)
{
    if (!img)
        return;
    if (img->d) {
        mv_sim_detach(s, img->d);
        destroy_domain(img->d);
    }
    free(img->roots);
    free(img->va);
    free(img);
}

int mv_sim_image_import(mv_sim_t *s, const struct mv_sim_image_config *cfg,
                        struct mv_sim_image **out, char *err, size_t errlen)
{
    if (!s || !cfg || !out || cfg->size < sizeof(*cfg) || !cfg->path) {
        seterr(err, errlen, "bad arguments");
        return MV_EINVAL;
    }
    *out = NULL;
    uint32_t paging = cfg->paging == MV_PAGING_PV ? MV_PAGING_SHADOW : cfg->paging;
    if (paging != MV_PAGING_HAP && paging != MV_PAGING_SHADOW) {
        seterr(err, errlen, "images are HVM guests: paging must be shadow or hap");
        return MV_EINVAL;
    }
    unsigned bits = cfg->phys_bits ? cfg->phys_bits : 40;
    if (bits < 32 || bits > 52) {
        seterr(err, errlen, "physical-address width %u out of range (32..52)", bits);
        return MV_EINVAL;
    }
    uint64_t bytes;
    int rc = mv_sim_image_size(cfg->path, &bytes, err, errlen);
    if (rc)
        return rc;
    if (bytes == 0 || (bytes & (MV_PAGE_SIZE - 1))) {
        seterr(err, errlen, "%s: image size %llu is not a positive multiple of 4 KiB",
               cfg->path, (unsigned long long)bytes);
        return MV_EINVAL;
    }
    if (bits < 64 && (bytes >> bits)) {
        seterr(err, errlen, "%s: %llu bytes do not fit a %u-bit guest-physical space",
               cfg->path, (unsigned long long)bytes, bits);
        return MV_EINVAL;
    }
    uint64_t cr3 = cfg->cr3 & ~0xfffull & ~(1ull << 63);
    if (cr3 >= bytes) {
        seterr(err, errlen, "CR3 %#llx lies outside the image's %llu bytes of RAM",
               (unsigned long long)cfg->cr3, (unsigned long long)bytes);
        return MV_EINVAL;
    }
    struct mv_host_stats hs = {.size = sizeof(hs)};
    mv_host_stats(s->h, &hs);
    if ((bytes >> MV_PAGE_SHIFT) > hs.free_frames) {
        seterr(err, errlen, "%s: %llu MiB of guest RAM do not fit the host's free memory "
               "(%llu MiB)", cfg->path, (unsigned long long)(bytes >> 20),
               (unsigned long long)(hs.free_frames >> 8));
        return MV_ENOMEM;
    }

    struct mv_sim_image *img = calloc(1, sizeof(*img));
    if (!img) {
        seterr(err, errlen, "out of memory");
        return MV_ENOMEM;
    }
    img->pages = bytes >> MV_PAGE_SHIFT;
    img->cr3 = cr3;
    img->st.bytes = bytes;
    img->va = calloc(img->pages, sizeof(*img->va));
    struct mv_domain_config dc = {.size = sizeof(dc), .domid = cfg->domid,
                                  .type = MV_DOMAIN_HVM, .paging = paging,
                                  .nr_vcpus = 1, .max_pages = img->pages,
                                  .node_affinity = MV_NODE_ANY, .phys_bits = bits,
                                  .shadow_pool_pages = paging == MV_PAGING_SHADOW
                                                           ? cfg->shadow_pool_pages : 0,
                                  .shadow_pool_max_pages = paging == MV_PAGING_SHADOW
                                                               ? cfg->shadow_pool_pages : 0,
                                  .flags = paging == MV_PAGING_SHADOW && cfg->shadow_sync
                                               ? MV_DOMF_SHADOW_SYNC : 0};
    if (!img->va) {
        rc = MV_ENOMEM;
        seterr(err, errlen, "out of memory");
    } else if ((rc = mv_domain_create(s->h, &dc, &img->d))) {
        img->d = NULL;
        seterr(err, errlen, "creating domain %u: %s", cfg->domid, mv_strerror_name(rc));
    } else if ((rc = mv_sim_attach(s, img->d))) {
        seterr(err, errlen, "attaching the vCPU: %s", mv_strerror_name(rc));
    }
    if (!rc)
        rc = fill(s, img, cfg->path, bytes, err, errlen);
    if (!rc) {
        struct mv_vcpu_state vs = {
            .size = sizeof(vs),
            .cr0 = X86_CR0_PE | MV_CR0_WP | MV_CR0_PG,
            .cr3 = cr3,
            .cr4 = MV_CR4_PAE | MV_CR4_PGE,
            .efer = MV_EFER_LME | X86_EFER_LMA | MV_EFER_NXE,
            .flags = cfg->gbpages ? MV_VCPUF_GBPAGES : 0,
        };
        if ((rc = mv_vcpu_set_state(mv_domain_vcpu(img->d, 0), &vs)))
            seterr(err, errlen, "CR3 %#llx refused: %s", (unsigned long long)cfg->cr3,
                   mv_strerror_name(rc));
    }
    if (!rc && (rc = compute_stats(img)))
        seterr(err, errlen, "out of memory");
    if (rc) {
        mv_sim_image_free(s, img);
        return rc;
    }
    *out = img;
    return 0;
}

/* ---- Verification --------------------------------------------------------------------------- */

struct verifier {
    mv_sim_vcpu_t *sv;
    const struct mv_sim_image *img;
    mv_sim_progress_fn cb;
    void *ctx;
    uint64_t done, total, mismatches;
    bool stopped;
};

static void verify_leaf(struct verifier *vf, uint64_t va)
{
    uint32_t flags = (va >> 47) ? 0 : MV_SIM_USER; /* kernel half as the kernel, the rest as user */
    if (mv_sim_verify_page(vf->sv, mv__sim_canon(va), flags, NULL, NULL))
        vf->mismatches++;
    if ((++vf->done & 0x3fff) == 0 && vf->cb && vf->cb(vf->ctx, vf->done, vf->total))
        vf->stopped = true;
}

static void verify_table(struct verifier *vf, int level, mv_gfn_t gfn, uint64_t base)
{
    const uint64_t *t = (const uint64_t *)(const void *)vf->img->va[gfn];
    for (unsigned i = 0; i < 512 && !vf->stopped; i++) {
        uint64_t e = t[i];
        if (!(e & X86_P))
            continue;
        uint64_t va = base + ((uint64_t)i << (12 + 9 * (level - 1)));
        if (level == 1 || (level != 4 && (e & X86_PS))) {
            unsigned order = 9 * (unsigned)(level - 1);
            mv_gfn_t first = (e & X86_ADDR) >> MV_PAGE_SHIFT & ~((1ull << order) - 1);
            uint64_t n = in_ram(vf->img, first, 1ull << order);
            for (uint64_t k = 0; k < n && !vf->stopped; k++)
                verify_leaf(vf, va + (k << MV_PAGE_SHIFT));
        } else {
            mv_gfn_t child = (e & X86_ADDR) >> MV_PAGE_SHIFT;
            if (child < vf->img->pages)
                verify_table(vf, level - 1, child, va);
        }
    }
}

int mv_sim_image_verify(mv_sim_t *s, struct mv_sim_image *img, mv_sim_progress_fn cb,
                        void *ctx, uint64_t *verified, uint64_t *mismatches)
{
    struct verifier vf = {.sv = mv_sim_vcpu(s, img->d, 0), .img = img, .cb = cb, .ctx = ctx,
                          .total = img->st.pages4k};
    if (!vf.sv)
        return MV_ENOENT;
    int rc = 0;
    for (uint64_t i = 0; i < img->nr_roots && !vf.stopped; i++) {
        if ((rc = mv_sim_set_cr3(vf.sv, img->roots[i] << MV_PAGE_SHIFT)))
            break;
        /* Globals differ between roots only in a guest that is wrong; do not blame it here. */
        mv_sim_flush_tlb(vf.sv);
        verify_table(&vf, 4, img->roots[i], 0);
    }
    if (!rc)
        rc = mv_sim_set_cr3(vf.sv, img->cr3);
    if (cb && !vf.stopped)
        cb(ctx, vf.done, vf.total);
    *verified = vf.done;
    *mismatches = vf.mismatches;
    return rc ? rc : vf.stopped ? MV_EAGAIN : 0;
}

/* ---- The guest's own listing --------------------------------------------------------------- */

struct map_line {
    uint32_t pid;
    uint64_t va;
    uint64_t pfn;
};

static int by_pid(const void *a, const void *b)
{
    const struct map_line *x = a, *y = b;
    return x->pid < y->pid ? -1 : x->pid > y->pid;
}

int mv_sim_image_check_maps(const struct mv_sim_image *img, const char *path, uint64_t *ok,
                            uint64_t *total, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return MV_EIO;
    }
    struct map_line *lines = NULL;
    size_t n = 0, cap = 0;
    char buf[512];
    int rc = 0;
    while (fgets(buf, sizeof(buf), f)) {
        unsigned pid;
        unsigned long long va, pfn;
        if (strncmp(buf, "MAP ", 4) || sscanf(buf + 4, "%u %llx %llx", &pid, &va, &pfn) != 3)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            struct map_line *nl = realloc(lines, cap * sizeof(*nl));
            if (!nl) {
                rc = MV_ENOMEM;
                break;
            }
            lines = nl;
        }
        lines[n++] = (struct map_line){pid, va, pfn};
    }
    fclose(f);
    *ok = 0;
    *total = n;
    if (rc) {
        free(lines);
        seterr(err, errlen, "out of memory");
        return rc;
    }
    qsort(lines, n, sizeof(*lines), by_pid);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && lines[j].pid == lines[i].pid)
            j++;
        uint64_t best = 0;
        for (uint64_t r = 0; r < img->nr_roots; r++) {
            uint64_t good = 0;
            for (size_t k = i; k < j; k++) {
                mv_gfn_t g;
                if (!mv_sim_gva_to_gfn(img->d, img->roots[r], lines[k].va, &g) &&
                    g == lines[k].pfn)
                    good++;
            }
            if (good > best)
                best = good;
        }
        *ok += best;
        i = j;
    }
    free(lines);
    return 0;
}

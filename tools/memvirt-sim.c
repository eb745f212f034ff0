/*
 * tools/memvirt-sim.c - run real guest-memory images on the simulator.
 *
 *   memvirt-sim --image FILE --cr3 HEX [--image FILE --cr3 HEX ...] [--verify]
 *               [--paging shadow|hap] [--shadow-pool N] [--no-oos] [--maxphyaddr N] [--gbpages]
 *               [--host-memory SIZE]
 *               [--format text|json|csv] [-o FILE]
 *   memvirt-sim --workload NAME [--domains N] [--vcpus N] [--seed S] [--steps N]
 *               [--mode pv|hvm [--paging shadow|hap] [--shadow-pool N] [--no-oos]] [--no-check]
 *               [--threads]
 *               [--format text|json|csv] [-o FILE]
 *
 * A workload runs the guest OS model (sim/guest.c) on N domains of N vCPUs each, with the
 * oracle at every invalidation unless --no-check; the per-domain figures depend only on
 * the arguments (no timing in them: timings are a top-level object). --threads runs one
 * thread per vCPU (a stress run): the figures then vary from run to run.
 *
 * Each image becomes an HVM domain (see sim/sim.h); its page-table statistics follow the
 * counting rules of shared/corpus/README.md. --verify checks every mapped 4 KiB page of
 * every root through the vCPU with the engine and through the oracle.
 *
 * Exit status: 0 all well, 1 a mismatch or an audit violation, 2 a usage error or input
 * that cannot be read.
 */
#include <getopt.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim.h"

#define MAX_IMAGES 64

struct image_arg {
    const char *path;
    uint64_t cr3;
    bool has_cr3;
    struct mv_sim_image *img;
    uint64_t verified, mismatches;
    struct mv_shadow_stats sh; /* shadow paging: after the import (and --verify) */
};

struct options {
    struct image_arg im[MAX_IMAGES];
    unsigned nr;
    const char *paging;
    unsigned maxphyaddr;
    uint64_t shadow_pool; /* --shadow-pool: frames per domain, 0: the engine's default */
    bool no_oos;          /* --no-oos: every shadow kept in sync */
    uint64_t host_memory;
    bool gbpages, verify;
    const char *format;
    const char *out;
    bool paging_given;
    const char *workload, *mode;
    uint32_t domains, vcpus;
    uint64_t seed, steps;
    bool no_check, threads;
};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: memvirt-sim --image FILE --cr3 HEX [--image FILE --cr3 HEX ...] [options]\n"
            "\n"
            "Load raw (or zstd-compressed) guest-physical memory dumps of 64-bit guests as HVM\n"
            "domains on the simulator and report their page tables; optionally verify every\n"
            "mapped page through the simulated vCPU and the oracle.\n"
            "\n"
            "  --image FILE          a memory dump (file offset == guest-physical address)\n"
            "  --cr3 HEX             the CR3 the next image was taken with (low 12 bits and\n"
            "                        bit 63 ignored); each --image takes the next --cr3\n"
            "  --paging shadow|hap   paging mode of the HVM guests (default shadow)\n"
            "  --shadow-pool N       shadow paging: each domain's shadow pool, fixed at N frames\n"
            "                        (at least 16 per vCPU; default: the pool sizes itself)\n"
            "  --no-oos              shadow paging: keep every shadow in sync (no out-of-sync\n"
            "                        L1 shadows; they are on by default)\n"
            "  --maxphyaddr N        guest physical-address width, 32..52 (default 40)\n"
            "  --gbpages             offer 1 GiB pages to the guests\n"
            "  --host-memory SIZE    machine memory, a number with K, M or G\n"
            "                        (default: what the images need plus a quarter)\n"
            "  --verify              read, write back and fetch every mapped 4 KiB page of\n"
            "                        every root through the vCPU and the oracle\n"
            "  --format FMT          text (default), json or csv\n"
            "  -o, --output FILE     write the report to FILE instead of stdout\n"
            "\n"
            "Or run a built-in workload on the guest OS model:\n"
            "  --workload NAME       idle, forky, mmap-churn, compile-like or memory-hog\n"
            "  --domains N           domains (default 2)\n"
            "  --vcpus N             vCPUs per domain (default 2)\n"
            "  --seed S              seed (default 1)\n"
            "  --steps N             guest steps over all vCPUs (default 20000)\n"
            "  --mode pv|hvm         guest type (default pv); with hvm, --paging shadow\n"
            "                        (the default) or hap\n"
            "  --no-check            skip the oracle at every invalidation\n"
            "  --threads             one thread per vCPU (a stress run); shootdowns wait only\n"
            "                        for vCPUs running guest code. Not deterministic: the\n"
            "                        figures vary from run to run, whatever the seed\n"
            "  -h, --help            this help\n"
            "  -V, --version         print the version\n"
            "\n"
            "Exit status: 0 all well, 1 a mismatch or an audit violation, 2 a usage error or\n"
            "unreadable input.\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "memvirt-sim: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'memvirt-sim --help'.\n");
    return 2;
}

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end == 'i' && shift)
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || v == 0 || v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

static bool parse_hex(const char *s, uint64_t *out)
{
    char *end;
    if (!*s || *s == '-')
        return false;
    unsigned long long v = strtoull(s, &end, 16);
    if (*end)
        return false;
    *out = v;
    return true;
}

enum { OPT_IMAGE = 256, OPT_CR3, OPT_PAGING, OPT_MAXPHY, OPT_HOSTMEM, OPT_VERIFY, OPT_FORMAT,
       OPT_GBPAGES, OPT_WORKLOAD, OPT_DOMAINS, OPT_VCPUS, OPT_SEED, OPT_STEPS, OPT_MODE,
       OPT_NOCHECK, OPT_THREADS, OPT_SHPOOL, OPT_NOOOS };

static bool parse_num(const char *s, uint64_t *out)
{
    char *end;
    if (!*s || *s == '-')
        return false;
    *out = strtoull(s, &end, 10);
    return !*end;
}

static int parse(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"image", required_argument, NULL, OPT_IMAGE},
        {"cr3", required_argument, NULL, OPT_CR3},
        {"paging", required_argument, NULL, OPT_PAGING},
        {"maxphyaddr", required_argument, NULL, OPT_MAXPHY},
        {"host-memory", required_argument, NULL, OPT_HOSTMEM},
        {"gbpages", no_argument, NULL, OPT_GBPAGES},
        {"verify", no_argument, NULL, OPT_VERIFY},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"output", required_argument, NULL, 'o'},
        {"workload", required_argument, NULL, OPT_WORKLOAD},
        {"domains", required_argument, NULL, OPT_DOMAINS},
        {"vcpus", required_argument, NULL, OPT_VCPUS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"steps", required_argument, NULL, OPT_STEPS},
        {"mode", required_argument, NULL, OPT_MODE},
        {"no-check", no_argument, NULL, OPT_NOCHECK},
        {"threads", no_argument, NULL, OPT_THREADS},
        {"shadow-pool", required_argument, NULL, OPT_SHPOOL},
        {"no-oos", no_argument, NULL, OPT_NOOOS},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:hV", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_IMAGE:
            if (o->nr == MAX_IMAGES)
                return usage_error("too many images (at most %s)", "64");
            o->im[o->nr++].path = optarg;
            break;
        case OPT_CR3: {
            unsigned i = 0;
            while (i < o->nr && o->im[i].has_cr3)
                i++;
            if (i == o->nr)
                return usage_error("--cr3 %s has no --image before it to belong to", optarg);
            if (!parse_hex(optarg, &o->im[i].cr3))
                return usage_error("--cr3: '%s' is not a hexadecimal number", optarg);
            o->im[i].has_cr3 = true;
            break;
        }
        case OPT_PAGING:
            if (strcmp(optarg, "hap") && strcmp(optarg, "shadow"))
                return usage_error("--paging: '%s' is not hap or shadow", optarg);
            o->paging = optarg;
            o->paging_given = true;
            break;
        case OPT_WORKLOAD: {
            struct mv_sim_workload_params wp;
            if (mv_sim_workload_preset(optarg, &wp))
                return usage_error("--workload: '%s' is not idle, forky, mmap-churn, "
                                   "compile-like or memory-hog", optarg);
            o->workload = optarg;
            break;
        }
        case OPT_DOMAINS:
        case OPT_VCPUS: {
            uint64_t v;
            if (!parse_num(optarg, &v) || !v || v > 64)
                return usage_error("'%s' is not a count from 1 to 64", optarg);
            *(c == OPT_DOMAINS ? &o->domains : &o->vcpus) = (uint32_t)v;
            break;
        }
        case OPT_SEED:
            if (!parse_num(optarg, &o->seed))
                return usage_error("--seed: '%s' is not a number", optarg);
            break;
        case OPT_STEPS:
            if (!parse_num(optarg, &o->steps) || o->steps > (1ull << 40))
                return usage_error("--steps: '%s' is not a step count", optarg);
            break;
        case OPT_MODE:
            if (strcmp(optarg, "pv") && strcmp(optarg, "hvm"))
                return usage_error("--mode: '%s' is not pv or hvm", optarg);
            o->mode = optarg;
            break;
        case OPT_THREADS:
            o->threads = true;
            break;
        case OPT_NOCHECK:
            o->no_check = true;
            break;
        case OPT_NOOOS:
            o->no_oos = true;
            break;
        case OPT_SHPOOL:
            if (!parse_num(optarg, &o->shadow_pool) || o->shadow_pool < 16 ||
                o->shadow_pool > MV_SHADOW_POOL_MAX)
                return usage_error("--shadow-pool: '%s' is not a frame count from 16 to 4194304",
                                   optarg);
            break;
        case OPT_MAXPHY: {
            uint64_t v;
            if (!parse_num(optarg, &v) || v < 32 || v > 52)
                return usage_error("--maxphyaddr: '%s' is not a width from 32 to 52", optarg);
            o->maxphyaddr = (unsigned)v;
            break;
        }
        case OPT_HOSTMEM:
            if (!parse_size(optarg, &o->host_memory) || o->host_memory < (4u << 20))
                return usage_error("--host-memory: '%s' is not a size of at least 4M", optarg);
            break;
        case OPT_GBPAGES:
            o->gbpages = true;
            break;
        case OPT_VERIFY:
            o->verify = true;
            break;
        case OPT_FORMAT:
            if (strcmp(optarg, "text") && strcmp(optarg, "json") && strcmp(optarg, "csv"))
                return usage_error("--format: '%s' is not text, json or csv", optarg);
            o->format = optarg;
            break;
        case 'o':
            o->out = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("memvirt-sim %s\n", mv_version());
            exit(0);
        case ':':
            return usage_error("option %s needs an argument", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (o->workload) {
        if (o->nr || o->verify || o->gbpages)
            return usage_error("%s", "--workload does not go with --image, --verify or --gbpages");
        if (o->paging_given && (!o->mode || strcmp(o->mode, "hvm")))
            return usage_error("%s", "--paging needs --mode hvm");
        return 0;
    }
    if (o->mode || o->domains || o->vcpus || o->seed || o->steps || o->no_check || o->threads)
        return usage_error("%s", "--mode, --domains, --vcpus, --seed, --steps, --no-check and "
                                 "--threads need --workload");
    if (!o->nr)
        return usage_error("%s", "no --image given (or --workload NAME)");
    for (unsigned i = 0; i < o->nr; i++)
        if (!o->im[i].has_cr3)
            return usage_error("--image %s has no --cr3", o->im[i].path);
    return 0;
}

/* ---- Progress ------------------------------------------------------------------------------ */

struct progress {
    unsigned idx, nr;
};

static int show_progress(void *ctx, uint64_t done, uint64_t total)
{
    const struct progress *p = ctx;
    fprintf(stderr, "\rmemvirt-sim: image %u/%u: verified %llu of %llu pages (%3.0f%%)", p->idx,
            p->nr, (unsigned long long)done, (unsigned long long)total,
            total ? 100.0 * (double)done / (double)total : 100.0);
    fflush(stderr);
    return 0;
}

/* ---- Reports ------------------------------------------------------------------------------- */

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static const char *paging_of(const struct options *o)
{
    return o->mode && !strcmp(o->mode, "hvm") ? o->paging : "pv";
}

/* The shadow module's figures of one domain, as a JSON object. */
static void json_shadow(FILE *f, const struct mv_shadow_stats *sh)
{
    static const char *const kinds[MV_SHADOW_NR_KINDS] = {"fixed", "inject", "emulate", "mmio",
                                                          "denied"};
    fprintf(f, "{\"faults\": {");
    for (unsigned k = 0; k < MV_SHADOW_NR_KINDS; k++)
        fprintf(f, "%s\"%s\": %llu", k ? ", " : "", kinds[k], (unsigned long long)sh->faults[k]);
    fprintf(f, "}, \"emulated_writes\": %llu, \"evictions\": %llu, \"zapped\": %llu, "
               "\"in_use\": {\"l4\": %llu, \"l3\": %llu, \"l2\": %llu, \"l1\": %llu, "
               "\"fl1\": %llu, \"fl2\": %llu}, \"pool_frames\": %llu, \"budget\": %llu, "
               "\"out_of_sync\": {\"now\": %llu, \"unsyncs\": %llu, \"resyncs\": %llu, "
               "\"entries_fixed\": %llu}, \"unshadowed\": {\"written_unused\": %llu, "
               "\"emptied\": %llu}}",
            (unsigned long long)sh->emulated_writes, (unsigned long long)sh->evictions,
            (unsigned long long)sh->zapped, (unsigned long long)sh->shadows[4],
            (unsigned long long)sh->shadows[3], (unsigned long long)sh->shadows[2],
            (unsigned long long)sh->shadows[1], (unsigned long long)sh->shadows[5],
            (unsigned long long)sh->shadows[6], (unsigned long long)sh->pool_frames,
            (unsigned long long)sh->budget, (unsigned long long)sh->oos_pages,
            (unsigned long long)sh->unsyncs, (unsigned long long)sh->resyncs,
            (unsigned long long)sh->resync_fixed, (unsigned long long)sh->unshadowed_early,
            (unsigned long long)sh->unshadowed_freed);
}

/* The same as text, two lines; `w` is the width of the report's labels. */
static void text_shadow(FILE *f, int w, const struct mv_shadow_stats *sh)
{
    fprintf(f, "  %-*sfaults: %llu fixed, %llu injected, %llu emulate, %llu mmio, %llu denied\n",
            w, "shadow", (unsigned long long)sh->faults[0], (unsigned long long)sh->faults[1],
            (unsigned long long)sh->faults[2], (unsigned long long)sh->faults[3],
            (unsigned long long)sh->faults[4]);
    fprintf(f, "  %-*s%llu emulated writes, %llu evictions, %llu leaves zapped; pool %llu of "
               "%llu frames\n",
            w, "", (unsigned long long)sh->emulated_writes, (unsigned long long)sh->evictions,
            (unsigned long long)sh->zapped, (unsigned long long)sh->pool_frames,
            (unsigned long long)sh->budget);
    fprintf(f, "  %-*sout of sync: %llu unsyncs, %llu resyncs fixing %llu entries; unshadowed: "
               "%llu written unused, %llu emptied\n",
            w, "", (unsigned long long)sh->unsyncs, (unsigned long long)sh->resyncs,
            (unsigned long long)sh->resync_fixed, (unsigned long long)sh->unshadowed_early,
            (unsigned long long)sh->unshadowed_freed);
}

static void report(FILE *f, const struct options *o, uint64_t audit_violations)
{
    const char *fmt = o->format ? o->format : "text";
    if (!strcmp(fmt, "json")) {
        fprintf(f, "{\"schema\": 1, \"tool\": \"memvirt-sim\", \"version\": \"%s\",\n",
                mv_version());
        fprintf(f, " \"config\": {\"paging\": \"%s\", \"maxphyaddr\": %u, \"gbpages\": %s, "
                   "\"host_memory\": %llu, \"verify\": %s},\n",
                o->paging, o->maxphyaddr, o->gbpages ? "true" : "false",
                (unsigned long long)o->host_memory, o->verify ? "true" : "false");
        fprintf(f, " \"images\": [");
        for (unsigned i = 0; i < o->nr; i++) {
            const struct image_arg *a = &o->im[i];
            const struct mv_sim_image_stats *st = &a->img->st;
            fprintf(f, "%s\n  {\"path\": ", i ? "," : "");
            json_string(f, a->path);
            fprintf(f, ", \"cr3\": \"%#llx\", \"bytes\": %llu, \"paging\": \"%s\",\n",
                    (unsigned long long)a->img->cr3, (unsigned long long)st->bytes, o->paging);
            fprintf(f, "   \"roots\": %llu, \"tables\": {\"l4\": %llu, \"l3\": %llu, \"l2\": %llu, "
                       "\"l1\": %llu},\n",
                    (unsigned long long)st->roots, (unsigned long long)st->tables[3],
                    (unsigned long long)st->tables[2], (unsigned long long)st->tables[1],
                    (unsigned long long)st->tables[0]);
            fprintf(f, "   \"leaves\": {\"4k\": %llu, \"2m\": %llu, \"1g\": %llu}, "
                       "\"pages4k\": %llu, \"verified\": %llu, \"mismatches\": ",
                    (unsigned long long)st->leaves[0], (unsigned long long)st->leaves[1],
                    (unsigned long long)st->leaves[2], (unsigned long long)st->pages4k,
                    (unsigned long long)a->verified);
            if (o->verify)
                fprintf(f, "%llu", (unsigned long long)a->mismatches);
            else
                fprintf(f, "null");
            if (a->sh.size) {
                fprintf(f, ",\n   \"shadow\": ");
                json_shadow(f, &a->sh);
            }
            fprintf(f, "}");
        }
        fprintf(f, "\n ],\n \"audit_violations\": %llu}\n", (unsigned long long)audit_violations);
        return;
    }
    if (!strcmp(fmt, "csv")) {
        fprintf(f, "path,cr3,bytes,paging,roots,tables_l4,tables_l3,tables_l2,tables_l1,"
                   "leaves_4k,leaves_2m,leaves_1g,pages4k,verified,mismatches\n");
        for (unsigned i = 0; i < o->nr; i++) {
            const struct image_arg *a = &o->im[i];
            const struct mv_sim_image_stats *st = &a->img->st;
            csv_field(f, a->path);
            fprintf(f, ",%#llx,%llu,%s,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,",
                    (unsigned long long)a->img->cr3, (unsigned long long)st->bytes, o->paging,
                    (unsigned long long)st->roots, (unsigned long long)st->tables[3],
                    (unsigned long long)st->tables[2], (unsigned long long)st->tables[1],
                    (unsigned long long)st->tables[0], (unsigned long long)st->leaves[0],
                    (unsigned long long)st->leaves[1], (unsigned long long)st->leaves[2],
                    (unsigned long long)st->pages4k, (unsigned long long)a->verified);
            if (o->verify)
                fprintf(f, "%llu", (unsigned long long)a->mismatches);
            fputc('\n', f);
        }
        return;
    }
    fprintf(f, "memvirt-sim %s: %u image%s, paging %s, maxphyaddr %u, host memory %llu MiB\n",
            mv_version(), o->nr, o->nr == 1 ? "" : "s", o->paging, o->maxphyaddr,
            (unsigned long long)(o->host_memory >> 20));
    for (unsigned i = 0; i < o->nr; i++) {
        const struct image_arg *a = &o->im[i];
        const struct mv_sim_image_stats *st = &a->img->st;
        fprintf(f, "\nimage %s (%llu MiB, cr3 %#llx, paging %s)\n", a->path,
                (unsigned long long)(st->bytes >> 20), (unsigned long long)a->img->cr3,
                o->paging);
        fprintf(f, "  roots     %llu\n", (unsigned long long)st->roots);
        fprintf(f, "  tables    L4 %llu  L3 %llu  L2 %llu  L1 %llu\n",
                (unsigned long long)st->tables[3], (unsigned long long)st->tables[2],
                (unsigned long long)st->tables[1], (unsigned long long)st->tables[0]);
        fprintf(f, "  leaves    4K %llu  2M %llu  1G %llu\n", (unsigned long long)st->leaves[0],
                (unsigned long long)st->leaves[1], (unsigned long long)st->leaves[2]);
        fprintf(f, "  pages4k   %llu\n", (unsigned long long)st->pages4k);
        if (o->verify)
            fprintf(f, "  verified  %llu pages, %llu mismatches\n",
                    (unsigned long long)a->verified, (unsigned long long)a->mismatches);
        else
            fprintf(f, "  verified  no (use --verify)\n");
        if (a->sh.size)
            text_shadow(f, 10, &a->sh);
    }
    fprintf(f, "\naudit: %s\n", audit_violations ? "VIOLATIONS" : "clean");
}

/* ---- Workloads ----------------------------------------------------------------------------- */

struct dom_report {
    struct mv_sim_guest_stats g;
    struct mv_sim_vcpu_stats v; /* summed over the vCPUs */
    struct mv_domain_stats d;
    struct mv_shadow_stats sh;  /* shadow paging only (sh.size 0 otherwise) */
    uint64_t oom;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void workload_report(FILE *f, const struct options *o, const struct dom_report *dr,
                            uint64_t violations, int run_rc, double secs)
{
    const char *fmt = o->format ? o->format : "text";
    uint64_t ops = 0;
    for (uint32_t i = 0; i < o->domains; i++)
        for (unsigned k = 0; k < MV_SIM_GOP_NR; k++)
            ops += dr[i].g.ops[k];
    if (!strcmp(fmt, "csv")) {
        fprintf(f, "domain,mode,paging,workload,ops,faults_demand,faults_cow,faults_segv,pages,"
                   "page_tables,checks,mismatches,ept_violations,shadow_faults,"
                   "emulated_writes,shadow_evictions,audit\n");
        for (uint32_t i = 0; i < o->domains; i++) {
            uint64_t shf = 0;
            for (unsigned k = 0; k < MV_SHADOW_NR_KINDS; k++)
                shf += dr[i].sh.faults[k];
            fprintf(f, "%u,%s,%s,%s,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,"
                       "%s\n", i + 1, o->mode, paging_of(o), o->workload, (unsigned long long)ops,
                    (unsigned long long)dr[i].g.faults[MV_SIM_GF_DEMAND],
                    (unsigned long long)dr[i].g.faults[MV_SIM_GF_COW],
                    (unsigned long long)dr[i].g.faults[MV_SIM_GF_SEGV],
                    (unsigned long long)(dr[i].g.pages_total - dr[i].g.pages_free),
                    (unsigned long long)dr[i].g.page_tables, (unsigned long long)dr[i].g.checks,
                    (unsigned long long)dr[i].g.mismatches,
                    (unsigned long long)dr[i].v.ept_violations, (unsigned long long)shf,
                    (unsigned long long)dr[i].sh.emulated_writes,
                    (unsigned long long)dr[i].sh.evictions, violations ? "violations" : "clean");
        }
        return;
    }
    if (!strcmp(fmt, "json")) {
        fprintf(f, "{\"schema\": 1, \"tool\": \"memvirt-sim\", \"version\": \"%s\",\n",
                mv_version());
        fprintf(f, " \"config\": {\"workload\": \"%s\", \"mode\": \"%s\", \"paging\": \"%s\", "
                   "\"domains\": %u, \"vcpus\": %u, \"seed\": %llu, \"steps\": %llu, "
                   "\"check\": %s},\n",
                o->workload, o->mode, paging_of(o), o->domains,
                o->vcpus, (unsigned long long)o->seed, (unsigned long long)o->steps,
                o->no_check ? "false" : "true");
        fprintf(f, " \"domains\": [");
        for (uint32_t i = 0; i < o->domains; i++) {
            const struct dom_report *d = &dr[i];
            fprintf(f, "%s\n  {\"domid\": %u, \"operations\": {", i ? "," : "", i + 1);
            for (unsigned k = 0; k < MV_SIM_GOP_NR; k++)
                fprintf(f, "%s\"%s\": %llu", k ? ", " : "", mv_sim_guest_op_name(k),
                        (unsigned long long)d->g.ops[k]);
            fprintf(f, "},\n   \"faults\": {");
            for (unsigned k = 0; k < MV_SIM_GF_NR; k++)
                fprintf(f, "\"%s\": %llu, ", mv_sim_guest_fault_name(k),
                        (unsigned long long)d->g.faults[k]);
            fprintf(f, "\"oom_kills\": %llu, \"page_faults\": %llu, \"ept_violations\": %llu, "
                       "\"vm_exits\": %llu},\n",
                    (unsigned long long)d->oom, (unsigned long long)d->v.page_faults,
                    (unsigned long long)d->v.ept_violations, (unsigned long long)d->v.exits);
            fprintf(f, "   \"pages\": {\"guest\": %llu, \"in_use\": %llu, \"page_tables\": %llu, "
                       "\"zero\": %llu, \"pool\": %llu, \"unique\": %llu, \"owned\": %llu, "
                       "\"overhead\": %llu},\n",
                    (unsigned long long)d->g.pages_total,
                    (unsigned long long)(d->g.pages_total - d->g.pages_free),
                    (unsigned long long)d->g.page_tables, (unsigned long long)d->g.pages_zero,
                    (unsigned long long)d->g.pages_pool, (unsigned long long)d->g.pages_unique,
                    (unsigned long long)d->d.pages, (unsigned long long)d->d.overhead_pages);
            fprintf(f, "   \"oracle\": {\"checks\": %llu, \"mismatches\": %llu, "
                       "\"tlb_violations\": %llu, \"content_errors\": %llu},\n",
                    (unsigned long long)d->g.checks, (unsigned long long)d->g.mismatches,
                    (unsigned long long)d->g.tlb_violations,
                    (unsigned long long)d->g.content_errors);
            fprintf(f, "   \"tlb\": {\"accesses\": %llu, \"hits\": %llu, \"walks\": %llu},\n",
                    (unsigned long long)d->v.accesses, (unsigned long long)d->v.tlb_hits,
                    (unsigned long long)d->v.walks);
            if (d->sh.size) {
                fprintf(f, "   \"shadow\": ");
                json_shadow(f, &d->sh);
                fprintf(f, ",\n");
            }
            fprintf(f, "   \"audit\": \"%s\", \"errors\": %llu}", violations ? "violations" : "clean",
                    (unsigned long long)d->g.errors);
        }
        fprintf(f, "\n ],\n \"result\": \"%s\",\n", run_rc ? mv_strerror(run_rc) : "ok");
        fprintf(f, " \"timings\": {\"seconds\": %.6f, \"ops_per_second\": %.0f}}\n", secs,
                secs > 0 ? (double)ops / secs : 0.0);
        return;
    }
    fprintf(f, "workload %s: %u domain(s) x %u vCPU(s), %s, seed %llu, %llu steps%s\n",
            o->workload, o->domains, o->vcpus, strcmp(o->mode, "hvm") ? "pv" : o->paging,
            (unsigned long long)o->seed, (unsigned long long)o->steps,
            o->threads ? ", threaded (not deterministic)" : "");
    for (uint32_t i = 0; i < o->domains; i++) {
        const struct dom_report *d = &dr[i];
        fprintf(f, "\ndomain %u\n  operations ", i + 1);
        for (unsigned k = 0; k < MV_SIM_GOP_NR; k++)
            fprintf(f, " %s=%llu", mv_sim_guest_op_name(k), (unsigned long long)d->g.ops[k]);
        fprintf(f, "\n  faults     ");
        for (unsigned k = 0; k < MV_SIM_GF_NR; k++)
            fprintf(f, " %s=%llu", mv_sim_guest_fault_name(k), (unsigned long long)d->g.faults[k]);
        fprintf(f, " oom=%llu ept=%llu vm_exits=%llu\n", (unsigned long long)d->oom,
                (unsigned long long)d->v.ept_violations, (unsigned long long)d->v.exits);
        fprintf(f, "  pages       %llu of %llu in use, %llu page tables; filled zero=%llu pool=%llu "
                   "unique=%llu\n",
                (unsigned long long)(d->g.pages_total - d->g.pages_free),
                (unsigned long long)d->g.pages_total, (unsigned long long)d->g.page_tables,
                (unsigned long long)d->g.pages_zero, (unsigned long long)d->g.pages_pool,
                (unsigned long long)d->g.pages_unique);
        fprintf(f, "  oracle      %llu checks, %llu mismatches, %llu TLB violations, %llu content "
                   "errors\n",
                (unsigned long long)d->g.checks, (unsigned long long)d->g.mismatches,
                (unsigned long long)d->g.tlb_violations, (unsigned long long)d->g.content_errors);
        if (d->sh.size)
            text_shadow(f, 12, &d->sh);
    }
    fprintf(f, "\nresult: %s; audit: %s; %.3f s, %.0f guest ops/s\n",
            run_rc ? mv_strerror(run_rc) : "ok", violations ? "VIOLATIONS" : "clean", secs,
            secs > 0 ? (double)ops / secs : 0.0);
}

static int run_workload(struct options *o, FILE *out)
{
    if (!o->mode)
        o->mode = "pv";
    if (!o->domains)
        o->domains = 2;
    if (!o->vcpus)
        o->vcpus = 2;
    if (!o->steps)
        o->steps = 20000;
    if (!o->seed)
        o->seed = 1;
    struct mv_sim_workload_params wp;
    mv_sim_workload_preset(o->workload, &wp);
    uint64_t need = (uint64_t)o->domains * wp.footprint * (wp.max_procs + 2) * MV_PAGE_SIZE;
    if (!o->host_memory)
        o->host_memory = need + (64u << 20);
    mv_sim_t *s = NULL;
    struct mv_sim_config sc = {.size = sizeof(sc), .mem_bytes = o->host_memory};
    int rc = mv_sim_create(&sc, &s);
    if (rc) {
        fprintf(stderr, "memvirt-sim: cannot build the host: %s\n", mv_strerror(rc));
        return 2;
    }
    struct mv_sim_run_config rcfg = {.size = sizeof(rcfg), .workload = o->workload,
                                     .domains = o->domains, .vcpus = o->vcpus, .seed = o->seed,
                                     .hvm = !strcmp(o->mode, "hvm"), .check = !o->no_check,
                                     .threaded = o->threads, .hap = !strcmp(o->paging, "hap"),
                                     .shadow_pool_pages = o->shadow_pool,
                                     .shadow_sync = o->no_oos};
    mv_sim_run_t *r = NULL;
    if ((rc = mv_sim_run_create(s, &rcfg, &r))) {
        fprintf(stderr, "memvirt-sim: cannot create the domains: %s\n", mv_strerror(rc));
        mv_sim_destroy(s);
        return 2;
    }
    double t0 = now();
    int run_rc = mv_sim_run_steps(r, o->steps);
    double secs = now() - t0;
    struct dom_report *dr = calloc(o->domains, sizeof(*dr));
    if (!dr) {
        mv_sim_run_destroy(r);
        mv_sim_destroy(s);
        return 2;
    }
    int status = run_rc ? 1 : 0;
    for (uint32_t i = 0; i < o->domains; i++) {
        mv_sim_guest_t *g = mv_sim_run_guest(r, i);
        mv_domain_t *d = mv_sim_guest_domain(g);
        mv_sim_guest_stats(g, &dr[i].g);
        dr[i].d.size = sizeof(dr[i].d);
        mv_domain_stats(d, &dr[i].d);
        dr[i].oom = mv_sim_run_oom(r, i);
        if (dr[i].d.paging == MV_PAGING_SHADOW) {
            dr[i].sh.size = sizeof(dr[i].sh);
            if (mv_shadow_stats(d, &dr[i].sh))
                dr[i].sh.size = 0;
        }
        for (uint32_t v = 0; v < o->vcpus; v++) {
            struct mv_sim_vcpu_stats vs;
            mv_sim_vcpu_stats(mv_sim_vcpu(s, d, v), &vs);
            dr[i].v.accesses += vs.accesses;
            dr[i].v.tlb_hits += vs.tlb_hits;
            dr[i].v.walks += vs.walks;
            dr[i].v.ept_violations += vs.ept_violations;
            dr[i].v.page_faults += vs.page_faults;
            dr[i].v.exits += vs.exits;
        }
        if (dr[i].g.mismatches || dr[i].g.tlb_violations || dr[i].g.content_errors ||
            dr[i].g.errors)
            status = 1;
    }
    static struct mv_audit_report rep;
    rep.size = sizeof(rep);
    uint64_t violations = 0;
    if (mv_host_audit(mv_sim_host(s), &rep)) {
        violations = rep.nr_violations ? rep.nr_violations : 1;
        status = 1;
    }
    workload_report(out, o, dr, violations, run_rc, secs);
    free(dr);
    mv_sim_run_destroy(r);
    mv_sim_destroy(s);
    return status;
}

int main(int argc, char **argv)
{
    struct options o = {.paging = "shadow", .maxphyaddr = 40};
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    if (o.workload) {
        FILE *wout = stdout;
        if (o.out && !(wout = fopen(o.out, "w"))) {
            perror(o.out);
            return 2;
        }
        int st = run_workload(&o, wout);
        if (wout != stdout && fclose(wout) != 0)
            return 2;
        if (wout == stdout && fflush(stdout) != 0)
            return 2;
        return st;
    }
    char err[512];
    if (!o.host_memory) {
        uint64_t need = 0;
        for (unsigned i = 0; i < o.nr; i++) {
            uint64_t b;
            if (mv_sim_image_size(o.im[i].path, &b, err, sizeof(err))) {
                fprintf(stderr, "memvirt-sim: %s\n", err);
                return 2;
            }
            if (b > (1ull << 46) || need > (1ull << 46)) {
                fprintf(stderr, "memvirt-sim: %s: image too large (%llu bytes)\n",
                        o.im[i].path, (unsigned long long)b);
                return 2;
            }
            need += b;
        }
        need += need / 4;
        need = (need + (2u << 20) - 1) & ~(uint64_t)((2u << 20) - 1);
        o.host_memory = need < (64u << 20) ? (64u << 20) : need;
    }
    FILE *out = stdout;
    if (o.out && !(out = fopen(o.out, "w"))) {
        perror(o.out);
        return 2;
    }
    bool tty = isatty(STDERR_FILENO);
    mv_sim_t *s = NULL;
    struct mv_sim_config sc = {.size = sizeof(sc), .mem_bytes = o.host_memory};
    if ((rc = mv_sim_create(&sc, &s))) {
        fprintf(stderr, "memvirt-sim: cannot build a %llu MiB host: %s\n",
                (unsigned long long)(o.host_memory >> 20), mv_strerror(rc));
        return 2;
    }
    int status = 0;
    for (unsigned i = 0; i < o.nr && !status; i++) {
        struct mv_sim_image_config ic = {.size = sizeof(ic), .path = o.im[i].path,
                                         .cr3 = o.im[i].cr3, .domid = i + 1,
                                         .paging = strcmp(o.paging, "hap") ? MV_PAGING_SHADOW
                                                                           : MV_PAGING_HAP,
                                         .phys_bits = o.maxphyaddr,
                                         .shadow_pool_pages = o.shadow_pool,
                                         .shadow_sync = o.no_oos,
                                         .gbpages = o.gbpages};
        if (tty)
            fprintf(stderr, "memvirt-sim: importing %s\n", o.im[i].path);
        if ((rc = mv_sim_image_import(s, &ic, &o.im[i].img, err, sizeof(err)))) {
            fprintf(stderr, "memvirt-sim: %s\n", err);
            status = 2;
        }
    }
    for (unsigned i = 0; i < o.nr && !status && o.verify; i++) {
        struct progress p = {i + 1, o.nr};
        rc = mv_sim_image_verify(s, o.im[i].img, tty ? show_progress : NULL, &p,
                                 &o.im[i].verified, &o.im[i].mismatches);
        if (tty)
            fprintf(stderr, "\n");
        if (rc) {
            fprintf(stderr, "memvirt-sim: verifying %s: %s\n", o.im[i].path, mv_strerror(rc));
            status = 1;
        }
        if (o.im[i].mismatches)
            status = 1;
    }
    for (unsigned i = 0; i < o.nr && status != 2; i++) {
        if (!o.im[i].img)
            continue;
        o.im[i].sh.size = sizeof(o.im[i].sh);
        if (mv_shadow_stats(o.im[i].img->d, &o.im[i].sh))
            o.im[i].sh.size = 0; /* not a shadow domain */
    }
    uint64_t violations = 0;
    if (status != 2) {
        static struct mv_audit_report rep;
        rep.size = sizeof(rep);
        if (mv_host_audit(mv_sim_host(s), &rep)) {
            violations = rep.nr_violations ? rep.nr_violations : 1;
            for (uint64_t k = 0; k < rep.nr_violations && k < MV_AUDIT_MAX_RECORDED; k++)
                fprintf(stderr, "memvirt-sim: audit: %s %s mfn=%#llx dom=%u\n",
                        rep.v[k].invariant, rep.v[k].what, (unsigned long long)rep.v[k].mfn,
                        rep.v[k].domid);
            status = 1;
        }
        report(out, &o, violations);
    }
    for (unsigned i = 0; i < o.nr; i++)
        mv_sim_image_free(s, o.im[i].img);
    mv_sim_destroy(s);
    if (out != stdout && fclose(out) != 0) {
        perror(o.out);
        return 2;
    }
    if (out == stdout && fflush(stdout) != 0)
        return 2;
    return status;
}

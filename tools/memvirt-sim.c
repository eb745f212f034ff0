/*
 * tools/memvirt-sim.c - run real guest-memory images on the simulator.
 *
 *   memvirt-sim --image FILE --cr3 HEX [--image FILE --cr3 HEX ...] [--verify]
 *               [--paging hap|shadow] [--maxphyaddr N] [--gbpages] [--host-memory SIZE]
 *               [--format text|json|csv] [-o FILE]
 *
 * Each image becomes an HVM domain (see sim/sim.h); its page-table statistics follow the
 * counting rules of shared/corpus/README.md. --verify checks every mapped 4 KiB page of
 * every root through the vCPU with the engine and through the oracle.
 *
 * Exit status: 0 all well, 1 a mismatch or an audit violation, 2 a usage error or input
 * that cannot be read.
 */
#include <getopt.h>
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
};

struct options {
    struct image_arg im[MAX_IMAGES];
    unsigned nr;
    const char *paging;
    unsigned maxphyaddr;
    uint64_t host_memory;
    bool gbpages, verify;
    const char *format;
    const char *out;
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
            "  --paging hap|shadow   paging mode of the HVM guests (default hap)\n"
            "  --maxphyaddr N        guest physical-address width, 32..52 (default 40)\n"
            "  --gbpages             offer 1 GiB pages to the guests\n"
            "  --host-memory SIZE    machine memory, a number with K, M or G\n"
            "                        (default: what the images need plus a quarter)\n"
            "  --verify              read, write back and fetch every mapped 4 KiB page of\n"
            "                        every root through the vCPU and the oracle\n"
            "  --format FMT          text (default), json or csv\n"
            "  -o, --output FILE     write the report to FILE instead of stdout\n"
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
       OPT_GBPAGES };

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
            break;
        case OPT_MAXPHY: {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || !*optarg || v < 32 || v > 52)
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
    if (!o->nr)
        return usage_error("%s", "no --image given");
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
                fprintf(f, "%llu}", (unsigned long long)a->mismatches);
            else
                fprintf(f, "null}");
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
    }
    fprintf(f, "\naudit: %s\n", audit_violations ? "VIOLATIONS" : "clean");
}

int main(int argc, char **argv)
{
    struct options o = {.paging = "hap", .maxphyaddr = 40};
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    if (!strcmp(o.paging, "shadow")) {
        fprintf(stderr, "memvirt-sim: --paging shadow: shadow paging is not available yet\n");
        return 2;
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
                                         .paging = MV_PAGING_HAP, .phys_bits = o.maxphyaddr,
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

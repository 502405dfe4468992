/* A QEMU TCG plugin that counts what a bracketed region of a guest program executes:
 * instructions, loads, stores, and the misses of a simulated data cache hierarchy of two or
 * three levels (each set-associative, LRU, write-allocate, non-inclusive; no prefetcher). The guest brackets the region with
 * a syscall QEMU does not implement (number MARKER_SYSCALL, answered -ENOSYS):
 *   syscall(MARKER_SYSCALL, MARK_START, tag)  reset the counters (not the caches)
 *   syscall(MARKER_SYSCALL, MARK_STOP, tag)   append "tag insns loads stores m1 m2 m3" to
 *                                             out (m<i>: misses of level i; 0 if absent)
 * Outside a bracket memory accesses are neither counted nor simulated, so the caches hold
 * what the previous bracketed region left: run a region twice and keep the second count for
 * its steady state.
 * With blocks=PATH it also appends, per translated block that ran inside the bracket, one line
 *   "tag vaddr executions instructions m1 m2 m3 code"   (vaddr and code in hex)
 * (m<i>: the misses at level i of the block's own loads and stores; code: the block's bytes)
 * so the host can weigh each block by a throughput model of the board's core (llvm-mca) and
 * set its misses against its compute.
 * Arguments: out=PATH, [blocks=PATH], l1=BYTES, l1_ways=N, l2=BYTES, l2_ways=N,
 * [l3=BYTES, l3_ways=N], line=BYTES.
 * SPDX-License-Identifier: GPL-2.0-or-later (the plugin runs inside QEMU). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MARKER_SYSCALL 0x5ca1e
#define MARK_START 1
#define MARK_STOP 2

typedef struct {
    unsigned sets, ways, line_shift;
    uint64_t *tags; /* sets x ways, most recently used first; 0 = empty (tags are line+1) */
    uint64_t misses;
} Cache;

static uint64_t insns;          /* every executed instruction, bracketed or not (inline) */
static uint64_t insns_at_start;
static uint64_t loads, stores;
static int counting;
#define MAX_LEVELS 3
static Cache levels[MAX_LEVELS];
static int n_levels;
static FILE *out;

/* One translated block: its code and how often it ran since the bracket opened (inline add,
 * so counting costs one add per block executed). Blocks are never freed: a retranslation of
 * the same code is another Block, merged by the host. */
typedef struct {
    uint64_t vaddr, executions;
    uint64_t misses[MAX_LEVELS]; /* of its own accesses, per level */
    uint32_t n_insns, n_bytes;
    unsigned char *code;
} Block;
static Block **blocks;
static size_t n_blocks, blocks_capacity;
static pthread_mutex_t blocks_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *blocks_out;

static int cache_init(Cache *c, uint64_t bytes, unsigned ways, unsigned line) {
    unsigned shift = 0;
    while ((1u << shift) < line) shift++;
    if ((1u << shift) != line || ways == 0 || bytes % ((uint64_t)line * ways)) return -1;
    c->sets = (unsigned)(bytes / ((uint64_t)line * ways));
    c->ways = ways;
    c->line_shift = shift;
    c->tags = calloc((size_t)c->sets * ways, sizeof(uint64_t));
    return c->tags ? 0 : -1;
}

/* 1 on a miss. LRU by move-to-front within the set (ways <= 32: a short memmove). */
static int cache_access(Cache *c, uint64_t line_addr) {
    uint64_t tag = line_addr + 1;
    uint64_t *set = c->tags + (size_t)(line_addr % c->sets) * c->ways;
    unsigned i;
    for (i = 0; i < c->ways; i++) {
        if (set[i] == tag) {
            memmove(set + 1, set, i * sizeof(uint64_t));
            set[0] = tag;
            return 0;
        }
    }
    memmove(set + 1, set, (c->ways - 1) * sizeof(uint64_t));
    set[0] = tag;
    c->misses++;
    return 1;
}

/* A level is looked up only when every level above it missed; the block that accessed
 * memory (if known) is charged its misses too. */
static void touch_line(uint64_t line_addr, uint64_t *block_misses) {
    for (int i = 0; i < n_levels && cache_access(&levels[i], line_addr); i++)
        if (block_misses) block_misses[i]++;
}

static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud) {
    (void)vcpu;
    if (!counting) return;
    if (qemu_plugin_mem_is_store(info)) stores++; else loads++;
    uint64_t size = 1ull << qemu_plugin_mem_size_shift(info);
    unsigned shift = levels[0].line_shift;
    uint64_t first = vaddr >> shift, last = (vaddr + size - 1) >> shift;
    uint64_t *block_misses = ud ? ((Block *)ud)->misses : NULL;
    for (uint64_t a = first; a <= last; a++) touch_line(a, block_misses);
}

static Block *new_block(struct qemu_plugin_tb *tb, size_t n) {
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i));
    Block *b = calloc(1, sizeof(Block));
    if (!b || !(b->code = malloc(bytes ? bytes : 1))) { free(b); return NULL; }
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n_insns = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t size = qemu_plugin_insn_size(insn);
        memcpy(b->code + b->n_bytes, qemu_plugin_insn_data(insn), size);
        b->n_bytes += (uint32_t)size;
    }
    pthread_mutex_lock(&blocks_lock);
    if (n_blocks == blocks_capacity) {
        size_t grown = blocks_capacity ? 2 * blocks_capacity : 4096;
        Block **more = realloc(blocks, grown * sizeof(Block *));
        if (!more) { pthread_mutex_unlock(&blocks_lock); free(b->code); free(b); return NULL; }
        blocks = more;
        blocks_capacity = grown;
    }
    blocks[n_blocks++] = b;
    pthread_mutex_unlock(&blocks_lock);
    return b;
}

static void write_blocks(uint64_t tag) {
    pthread_mutex_lock(&blocks_lock);
    for (size_t i = 0; i < n_blocks; i++) {
        Block *b = blocks[i];
        if (!b->executions) continue;
        fprintf(blocks_out, "%llu %llx %llu %u %llu %llu %llu ", (unsigned long long)tag,
                (unsigned long long)b->vaddr, (unsigned long long)b->executions, b->n_insns,
                (unsigned long long)b->misses[0], (unsigned long long)b->misses[1],
                (unsigned long long)b->misses[2]);
        for (uint32_t k = 0; k < b->n_bytes; k++) fprintf(blocks_out, "%02x", b->code[k]);
        fputc('\n', blocks_out);
    }
    pthread_mutex_unlock(&blocks_lock);
    fflush(blocks_out);
}

static void reset_blocks(void) {
    pthread_mutex_lock(&blocks_lock);
    for (size_t i = 0; i < n_blocks; i++) {
        blocks[i]->executions = 0;
        memset(blocks[i]->misses, 0, sizeof(blocks[i]->misses));
    }
    pthread_mutex_unlock(&blocks_lock);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
    Block *b = blocks_out ? new_block(tb, n) : NULL;
    if (b) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                                    &b->executions, 1);
    for (size_t i = 0; i < n; i++)
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_mem,
                                         QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, b);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8) {
    (void)id; (void)vcpu; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num != MARKER_SYSCALL) return;
    if (a1 == MARK_START) {
        insns_at_start = insns;
        loads = stores = 0;
        for (int i = 0; i < n_levels; i++) levels[i].misses = 0;
        if (blocks_out) reset_blocks();
        counting = 1;
    } else if (a1 == MARK_STOP && counting) {
        counting = 0;
        fprintf(out, "%llu %llu %llu %llu %llu %llu %llu\n", (unsigned long long)a2,
                (unsigned long long)(insns - insns_at_start), (unsigned long long)loads,
                (unsigned long long)stores, (unsigned long long)levels[0].misses,
                (unsigned long long)levels[1].misses,
                (unsigned long long)(n_levels > 2 ? levels[2].misses : 0));
        fflush(out);
        if (blocks_out) write_blocks(a2);
    }
}

static void on_qemu_exit(qemu_plugin_id_t id, void *ud) {
    (void)id; (void)ud;
    if (out) fclose(out);
    if (blocks_out) fclose(blocks_out);
}

static int parse_u64(const char *arg, const char *key, uint64_t *value) {
    size_t n = strlen(key);
    if (strncmp(arg, key, n) != 0 || arg[n] != '=') return 0;
    *value = strtoull(arg + n + 1, NULL, 0);
    return 1;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv) {
    uint64_t bytes[MAX_LEVELS] = {0}, ways[MAX_LEVELS] = {0}, line = 64;
    const char *path = NULL, *blocks_path = NULL;
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) path = argv[i] + 4;
        else if (strncmp(argv[i], "blocks=", 7) == 0) blocks_path = argv[i] + 7;
        else if (!(parse_u64(argv[i], "l1", &bytes[0]) || parse_u64(argv[i], "l1_ways", &ways[0])
                   || parse_u64(argv[i], "l2", &bytes[1]) || parse_u64(argv[i], "l2_ways", &ways[1])
                   || parse_u64(argv[i], "l3", &bytes[2]) || parse_u64(argv[i], "l3_ways", &ways[2])
                   || parse_u64(argv[i], "line", &line))) {
            fprintf(stderr, "count_plugin: unknown argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!path) { fprintf(stderr, "count_plugin: out=PATH is required\n"); return -1; }
    n_levels = bytes[2] ? 3 : 2;
    for (int i = 0; i < n_levels; i++) {
        if (cache_init(&levels[i], bytes[i], (unsigned)ways[i], (unsigned)line)) {
            fprintf(stderr, "count_plugin: bad geometry of cache level %d (l%d and l%d_ways are "
                            "required; size = line x ways x sets, line a power of two)\n",
                    i + 1, i + 1, i + 1);
            return -1;
        }
    }
    out = fopen(path, "a");
    if (!out) { fprintf(stderr, "count_plugin: cannot open %s: %s\n", path, strerror(errno)); return -1; }
    if (blocks_path && !(blocks_out = fopen(blocks_path, "a"))) {
        fprintf(stderr, "count_plugin: cannot open %s: %s\n", blocks_path, strerror(errno));
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    return 0;
}

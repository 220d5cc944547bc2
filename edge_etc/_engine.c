/* The compiled flow engine: decoding, flow table, windowing and decisions in C.
 *
 * `Engine` has the semantics of edge_etc/flows.py `FlowTable` and of the decision rule of
 * edge_etc/runner.py `Pipeline.infer`, which stay the reference. That covers the canonical
 * bidirectional key, the client rule, closing and reuse on a SYN, least-recently-used
 * eviction at `max_flows`, idle expiry on the same schedule and clock, the window rule,
 * `max_windows` and the counters. tests/test_engine.py compares whole runs of both.
 *
 * Memory: a flow is one fixed-size slot in blocks of slots, with no Python object. Each of
 * its buffered vectors is an item of a pool of fixed-size items, taken at a usable packet
 * and given back when no later window needs it or the flow leaves the table. Items cut to
 * the vector's last non-zero byte and allocated one by one were tried: they saved under 1%
 * of the vector bytes of benchmarks/data/flows_100k.pcap, whose packets are mostly longer
 * than the header part, and the allocator's overhead cost more. With `max_windows` above 1,
 * the probability sums of a decision live in a second pool, referenced by the flow and by
 * its windows waiting for inference, and are freed when the last of them lets go.
 *
 * Windows waiting for inference are rows of one contiguous buffer, which the Python side
 * reads through the buffer protocol. Their metadata (key, time stamp, packet count) is
 * copied when the window completes, so a flow that leaves the table before inference
 * changes nothing.
 *
 * Records the fast decoder does not take are handed back to Python, whose decoder makes a
 * Packet that `add_packet` puts into the same table. */

#include "_fastpath.h"
#include <structmember.h>
#include <arpa/inet.h>
#include <math.h>
#include <string.h>
#include <sys/socket.h>

#define NONE UINT32_MAX
#define KEY_BYTES 38
#define POOL_BLOCK_ITEMS 256
#define FLOW_BLOCK_BITS 12
#define FLOW_BLOCK_SLOTS (1u << FLOW_BLOCK_BITS)
#define JUMP_LOG_FACTOR 10.0
/* Open flows from which Engine.feed prefetches table entries (see engine_feed). */
#define PREFETCH_FLOWS 16384

/* TCP flag bits. */
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Bits of flow_t.flags. */
#define CLIENT_LOW 1  /* the client is the key's lower endpoint */
#define CLOSING 2     /* the flow has seen FIN or RST */

/* Results of Engine.feed. */
enum { FEED_NEED_DATA = 0, FEED_BATCH_FULL = 1, FEED_HANDBACK = 2, FEED_LIMIT = 3, FEED_ERROR = 4 };

/* A flow key: protocol, address length, the lower endpoint's port, the other port (both
 * big-endian), then the two addresses, lower endpoint first, zero-padded to KEY_BYTES. The
 * lower endpoint is the (address, port) pair that compares lower, as in flows.flow_key. */
typedef struct {
    unsigned char key[KEY_BYTES];
    uint8_t flags;
    uint8_t buffered;      /* vectors in the `recent` chain */
    double last_seen;      /* the table clock at the flow's last packet */
    double last_ts;        /* time stamp of the flow's last packet, for the gap */
    uint64_t packets;
    uint32_t windows;
    uint32_t older, newer; /* order of last packets, oldest first */
    uint32_t next;         /* next flow in the hash chain, or in the free list */
    uint32_t recent;       /* oldest buffered vector in vector_pool, or NONE */
    uint32_t decision;     /* slot in decision_pool, or NONE */
    uint64_t serial;       /* creation number, from 1; only in slots of an engine with serials */
} flow_t;

/* The size of a slot without `serial`, which must keep the slots 8-byte aligned. */
#define FLOW_SLOT_BYTES_WITHOUT_SERIAL offsetof(flow_t, serial)

/* A window waiting for inference. */
typedef struct {
    unsigned char key[KEY_BYTES];
    double ts;
    uint64_t packets;
    uint64_t serial;
    uint32_t decision;
    uint8_t client_low;
} pending_t;

/* Decision state of a flow with max_windows > 1, followed by `classes` sums. */
typedef struct {
    uint32_t refs;     /* the flow, while it may make windows, and each pending window */
    uint32_t results;  /* windows combined */
    int32_t code;      /* label code of the last decision, -1 before the first */
    uint32_t padding;  /* keeps the sums 8-byte aligned */
    double sums[];
} decision_t;

/* A pool of fixed-size items addressed by index, allocated in blocks that are never moved.
 * Free items are linked through their first four bytes. */
typedef struct {
    unsigned char **blocks;
    uint32_t nblocks;
    uint32_t used;       /* items handed out at least once (the high-water mark) */
    uint32_t free_head;
    uint32_t live;
    size_t item_size;
} pool_t;

static void *pool_at(const pool_t *p, uint32_t i)
{
    return p->blocks[i / POOL_BLOCK_ITEMS] + (size_t)(i % POOL_BLOCK_ITEMS) * p->item_size;
}

static uint32_t pool_alloc(pool_t *p)
{
    uint32_t i;
    if (p->free_head != NONE) {
        i = p->free_head;
        memcpy(&p->free_head, pool_at(p, i), sizeof(uint32_t));
    }
    else {
        if (p->used == (uint32_t)p->nblocks * POOL_BLOCK_ITEMS) {
            if (p->nblocks >= (NONE - 1) / POOL_BLOCK_ITEMS)
                return NONE;
            unsigned char **blocks = PyMem_Realloc(p->blocks, sizeof(*blocks) * (p->nblocks + 1));
            if (blocks == NULL)
                return NONE;
            p->blocks = blocks;
            blocks[p->nblocks] = PyMem_Malloc(p->item_size * POOL_BLOCK_ITEMS);
            if (blocks[p->nblocks] == NULL)
                return NONE;
            p->nblocks++;
        }
        i = p->used++;
    }
    p->live++;
    return i;
}

static void pool_free(pool_t *p, uint32_t i)
{
    memcpy(pool_at(p, i), &p->free_head, sizeof(uint32_t));
    p->free_head = i;
    p->live--;
}

static void pool_release(pool_t *p)
{
    for (uint32_t b = 0; b < p->nblocks; b++)
        PyMem_Free(p->blocks[b]);
    PyMem_Free(p->blocks);
    p->blocks = NULL;
    p->nblocks = p->used = p->live = 0;
    p->free_head = NONE;
}

typedef struct {
    PyObject_HEAD
    /* settings */
    fp_settings vs;
    int window_packets;
    int rule_all;           /* window_rule "all": every packet, not only payload carriers */
    Py_ssize_t vec_bytes;   /* a buffered vector: without the port block */
    Py_ssize_t row_bytes;   /* a vector in a window: with the port block */
    Py_ssize_t window_bytes;
    long port_buckets;      /* bytes of the port block (0 without context) */
    uint64_t max_flows;
    double idle_timeout_s;
    double expiry_interval_s;
    uint32_t max_windows;
    int decisions;          /* keep decision state for max_windows > 1 */
    uint64_t seed;
    PyObject *on_jump;      /* called as on_jump(seconds, count) on a forward time jump */
    /* flow table: slots in blocks of FLOW_BLOCK_SLOTS that never move */
    unsigned char **flow_blocks;
    size_t slot_bytes;      /* sizeof(flow_t), or without `serial` */
    int serials;
    uint32_t capacity, free_head, count, oldest, newest;
    uint32_t *buckets;
    uint32_t bucket_mask;
    int have_now;
    double now, next_expiry;
    pool_t vector_pool;     /* one buffered vector each, after the index of the next one */
    pool_t decision_pool;
    unsigned char *scratch;  /* one vector */
    /* counters */
    unsigned long long packets, flows_created, evictions, expirations, too_short, windows,
        time_jumps_back, time_jumps_forward;
    /* pending windows */
    unsigned char *pending_windows;
    pending_t *pending;
    Py_ssize_t pending_count, pending_capacity;
    /* decisions */
    Py_ssize_t classes;
    double threshold;
    PyObject *label_names;  /* tuple of str, "unknown" last */
    PyObject *label_json;   /* tuple of str: the names as JSON strings */
} EngineObject;

/* ---- flow table --------------------------------------------------------------------- */

static inline flow_t *flow_at(const EngineObject *e, uint32_t i)
{
    return (flow_t *)(e->flow_blocks[i >> FLOW_BLOCK_BITS] +
                      (size_t)(i & (FLOW_BLOCK_SLOTS - 1)) * e->slot_bytes);
}

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* A hash keyed with a random seed per engine, so that traffic cannot be crafted to share
 * one chain without knowing the seed. NOTE: it is a fast mixing hash, not a keyed PRF like
 * SipHash. */
static inline uint32_t key_hash(const EngineObject *e, const unsigned char *key)
{
    size_t used = 6 + 2 * (size_t)key[1];  /* 14 bytes of an IPv4 key, 38 of IPv6 */
    uint64_t h = e->seed;
    for (size_t at = 0; at < used; at += 8) {
        uint64_t w = 0;
        memcpy(&w, key + at, used - at < 8 ? used - at : 8);
        h = mix64(h ^ w) + at;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static int grow_buckets(EngineObject *e)
{
    uint32_t size = (e->bucket_mask + 1) * 2;
    uint32_t *buckets = PyMem_Malloc(sizeof(uint32_t) * size);
    if (buckets == NULL)
        return -1;
    memset(buckets, 0xFF, sizeof(uint32_t) * size);
    uint32_t mask = size - 1;
    for (uint32_t b = 0; b <= e->bucket_mask; b++) {
        uint32_t i = e->buckets[b];
        while (i != NONE) {
            flow_t *f = flow_at(e, i);
            uint32_t next = f->next;
            uint32_t at = key_hash(e, f->key) & mask;
            f->next = buckets[at];
            buckets[at] = i;
            i = next;
        }
    }
    PyMem_Free(e->buckets);
    e->buckets = buckets;
    e->bucket_mask = mask;
    return 0;
}

static uint32_t lookup(const EngineObject *e, const unsigned char *key)
{
    uint32_t i = e->buckets[key_hash(e, key) & e->bucket_mask];
    while (i != NONE && memcmp(flow_at(e, i)->key, key, KEY_BYTES) != 0)
        i = flow_at(e, i)->next;
    return i;
}

static void unlink_order(EngineObject *e, uint32_t i)
{
    flow_t *f = flow_at(e, i);
    if (f->older == NONE)
        e->oldest = f->newer;
    else
        flow_at(e, f->older)->newer = f->newer;
    if (f->newer == NONE)
        e->newest = f->older;
    else
        flow_at(e, f->newer)->older = f->older;
    f->older = f->newer = NONE;
}

static void append_order(EngineObject *e, uint32_t i)
{
    flow_t *f = flow_at(e, i);
    f->older = e->newest;
    f->newer = NONE;
    if (e->newest == NONE)
        e->oldest = i;
    else
        flow_at(e, e->newest)->newer = i;
    e->newest = i;
}

/* Buffered vectors form a chain per flow, oldest first: each item of vector_pool is the
 * index of the next item (NONE at the end), then one vector without the port block. */
static inline uint32_t *vector_link(const EngineObject *e, uint32_t item)
{
    return (uint32_t *)pool_at(&e->vector_pool, item);
}

static inline unsigned char *vector_data(const EngineObject *e, uint32_t item)
{
    return (unsigned char *)pool_at(&e->vector_pool, item) + sizeof(uint32_t);
}

static void append_vector(EngineObject *e, flow_t *f, uint32_t item)
{
    *vector_link(e, item) = NONE;
    uint32_t *link = &f->recent;
    while (*link != NONE)
        link = vector_link(e, *link);
    *link = item;
}

static void free_vectors(EngineObject *e, flow_t *f)
{
    uint32_t item = f->recent;
    while (item != NONE) {
        uint32_t next = *vector_link(e, item);
        pool_free(&e->vector_pool, item);
        item = next;
    }
    f->recent = NONE;
}

static void release_decision(EngineObject *e, uint32_t slot)
{
    decision_t *d = pool_at(&e->decision_pool, slot);
    if (--d->refs == 0)
        pool_free(&e->decision_pool, slot);
}

/* Take flow `i` out of the table and free its vectors and decision reference
 * (FlowTable._remove and _end). */
static void end_flow(EngineObject *e, uint32_t i)
{
    flow_t *f = flow_at(e, i);
    uint32_t *link = &e->buckets[key_hash(e, f->key) & e->bucket_mask];
    while (*link != i)
        link = &flow_at(e, *link)->next;
    *link = f->next;
    unlink_order(e, i);
    free_vectors(e, f);
    if (f->decision != NONE) {
        release_decision(e, f->decision);
        f->decision = NONE;
    }
    if (f->windows == 0)
        e->too_short++;
    f->next = e->free_head;
    e->free_head = i;
    e->count--;
}

static void expire(EngineObject *e, double now)
{
    double limit = fp_double(now - e->idle_timeout_s);
    while (e->oldest != NONE && flow_at(e, e->oldest)->last_seen <= limit) {
        e->expirations++;
        end_flow(e, e->oldest);
    }
}

/* A free flow slot, adding a block of slots when none is left; NONE when out of memory.
 * The blocks add up to at most max_flows slots. */
static uint32_t new_slot(EngineObject *e)
{
    if (e->free_head == NONE) {
        uint64_t room = e->max_flows - e->capacity;
        uint32_t size = room < FLOW_BLOCK_SLOTS ? (uint32_t)room : FLOW_BLOCK_SLOTS;
        uint32_t block = e->capacity >> FLOW_BLOCK_BITS;
        if (size == 0 || (e->capacity & (FLOW_BLOCK_SLOTS - 1)) != 0)
            return NONE;  /* the last block is partial only when max_flows is reached */
        unsigned char **blocks = PyMem_Realloc(e->flow_blocks, sizeof(*blocks) * (block + 1));
        if (blocks == NULL)
            return NONE;
        e->flow_blocks = blocks;
        blocks[block] = PyMem_Malloc(e->slot_bytes * size);
        if (blocks[block] == NULL)
            return NONE;
        for (uint32_t i = e->capacity + size; i-- > e->capacity;) {
            flow_at(e, i)->next = e->free_head;
            e->free_head = i;
        }
        e->capacity += size;
    }
    uint32_t i = e->free_head;
    e->free_head = flow_at(e, i)->next;
    return i;
}

/* ---- adding packets ------------------------------------------------------------------- */

/* What the table reads of a packet besides the vectorizer's view. */
typedef struct {
    double ts;
    const unsigned char *src, *dst;
    Py_ssize_t addr_len;
    fp_packet_view view;
} table_packet;

static void report_jump(EngineObject *e, double seconds)
{
    e->time_jumps_forward++;
    if (e->on_jump == NULL || e->on_jump == Py_None)
        return;
    PyObject *result = PyObject_CallFunction(e->on_jump, "dK", seconds, e->time_jumps_forward);
    if (result == NULL)  /* a logging failure must not cost a packet */
        PyErr_WriteUnraisable(e->on_jump);
    Py_XDECREF(result);
}

static int client_is_sender(const table_packet *p)
{
    if (p->view.proto == 6 && (p->view.flags & TCP_SYN))
        return !(p->view.flags & TCP_ACK);  /* a SYN+ACK is sent by the server */
    /* Otherwise the higher port is the client's; with equal ports the sender is. */
    return p->view.sport >= p->view.dport;
}

/* Create the flow of `key` for its first packet `p`, evicting the least recently used flow
 * when the table is full (FlowTable._create). Returns the slot, or NONE with MemoryError. */
static uint32_t create_flow(EngineObject *e, const unsigned char *key, int src_low,
                            const table_packet *p)
{
    if (e->count >= e->max_flows) {
        e->evictions++;
        end_flow(e, e->oldest);
    }
    if ((uint64_t)e->count + 1 > (uint64_t)(e->bucket_mask + 1) / 4 * 3 && grow_buckets(e) < 0) {
        PyErr_NoMemory();
        return NONE;
    }
    uint32_t i = new_slot(e);
    if (i == NONE) {
        PyErr_NoMemory();
        return NONE;
    }
    e->flows_created++;
    int client_low;
    if (memcmp(p->src, p->dst, p->addr_len) == 0 && p->view.sport == p->view.dport)
        client_low = src_low;  /* both endpoints the same: every packet is client to server */
    else
        client_low = src_low == client_is_sender(p);
    flow_t *f = flow_at(e, i);
    memcpy(f->key, key, KEY_BYTES);
    f->flags = client_low ? CLIENT_LOW : 0;
    f->last_seen = p->ts;
    f->last_ts = p->ts;
    f->packets = 0;
    if (e->serials)
        f->serial = e->flows_created;
    f->windows = 0;
    f->recent = NONE;
    f->decision = NONE;
    f->buffered = 0;
    uint32_t at = key_hash(e, key) & e->bucket_mask;
    f->next = e->buckets[at];
    e->buckets[at] = i;
    append_order(e, i);
    e->count++;
    return i;
}

static inline void write_port_block(const EngineObject *e, unsigned char *at, unsigned port)
{
    if (e->port_buckets == 0)
        return;
    memset(at, 0, e->port_buckets);
    at[(((uint64_t)port * 2654435761u) & 0xFFFFFFFFu) % (uint64_t)e->port_buckets] = 255;
}

/* Complete a window of flow `i` whose newest vector is in e->scratch: copy it to the
 * pending rows with its metadata, and keep the vectors the next window needs. */
static int emit_window(EngineObject *e, uint32_t i, double ts)
{
    flow_t *f = flow_at(e, i);
    const int older = e->window_packets - 1;
    const int last = f->windows + 1 >= e->max_windows;
    int keep_decision = e->decisions && e->max_windows > 1;

    if (keep_decision && f->decision == NONE) {
        uint32_t slot = pool_alloc(&e->decision_pool);
        if (slot == NONE) {
            PyErr_NoMemory();
            return -1;
        }
        decision_t *d = pool_at(&e->decision_pool, slot);
        d->refs = 1;
        d->results = 0;
        d->code = -1;
        f->decision = slot;
    }
    f->windows++;
    e->windows++;

    const int client_low = (f->flags & CLIENT_LOW) != 0;
    const unsigned server_port = client_low ? (unsigned)f->key[4] << 8 | f->key[5]
                                            : (unsigned)f->key[2] << 8 | f->key[3];
    const Py_ssize_t vb = e->vec_bytes, row = e->row_bytes;
    unsigned char *out = e->pending_windows + e->pending_count * e->window_bytes;
    uint32_t item = f->recent;
    for (int k = 0; k < older; k++) {
        memcpy(out + k * row, vector_data(e, item), vb);
        write_port_block(e, out + k * row + vb, server_port);
        item = *vector_link(e, item);
    }
    memcpy(out + older * row, e->scratch, vb);
    write_port_block(e, out + older * row + vb, server_port);

    if (last) {
        free_vectors(e, f);  /* no more windows: free the vectors */
    }
    else if (older) {
        /* The oldest vector's item takes the newest vector, at the end of the chain. */
        item = f->recent;
        f->recent = *vector_link(e, item);
        memcpy(vector_data(e, item), e->scratch, vb);
        append_vector(e, f, item);
    }

    pending_t *meta = &e->pending[e->pending_count++];
    memcpy(meta->key, f->key, KEY_BYTES);
    meta->ts = ts;
    meta->packets = f->packets;
    meta->serial = e->serials ? f->serial : 0;
    meta->client_low = (uint8_t)client_low;
    meta->decision = NONE;
    if (keep_decision) {
        decision_t *d = pool_at(&e->decision_pool, f->decision);
        d->refs++;
        meta->decision = f->decision;
        if (f->windows >= e->max_windows) {  /* the flow makes no more windows */
            release_decision(e, f->decision);
            f->decision = NONE;
        }
    }
    return 0;
}

/* Write the canonical key of `p` to `key`: the lower (address, port) endpoint first.
 * Returns whether the sender is the lower endpoint. */
static int build_key(const table_packet *p, unsigned char *key)
{
    const Py_ssize_t alen = p->addr_len;
    const unsigned sport = (unsigned)p->view.sport, dport = (unsigned)p->view.dport;
    int order = memcmp(p->src, p->dst, alen);
    int src_low = order < 0 || (order == 0 && sport <= dport);
    const unsigned char *low = src_low ? p->src : p->dst, *high = src_low ? p->dst : p->src;
    unsigned low_port = src_low ? sport : dport, high_port = src_low ? dport : sport;
    memset(key, 0, KEY_BYTES);
    key[0] = (unsigned char)p->view.proto;
    key[1] = (unsigned char)alen;
    key[2] = (unsigned char)(low_port >> 8);
    key[3] = (unsigned char)low_port;
    key[4] = (unsigned char)(high_port >> 8);
    key[5] = (unsigned char)high_port;
    memcpy(key + 6, low, alen);
    memcpy(key + 6 + alen, high, alen);
    return src_low;
}

/* Account one decoded packet to its flow and complete a window when it does
 * (FlowTable.add). Returns 0, or -1 with a Python exception set. */
static int engine_add(EngineObject *e, const table_packet *p)
{
    const double ts = p->ts;
    e->packets++;
    if (!e->have_now) {
        e->have_now = 1;
        e->now = ts;
        e->next_expiry = fp_double(ts + e->expiry_interval_s);
    }
    else if (ts > e->now) {
        double jump = fp_double(ts - e->now);
        if (jump > fp_double(JUMP_LOG_FACTOR * e->idle_timeout_s))
            report_jump(e, jump);
        e->now = ts;
        if (e->now >= e->next_expiry) {
            expire(e, e->now);
            e->next_expiry = fp_double(e->now + e->expiry_interval_s);
        }
    }
    else if (ts < fp_double(e->now - 1.0)) {
        e->time_jumps_back++;
    }

    unsigned char key[KEY_BYTES];
    const int src_low = build_key(p, key);
    const long flags = p->view.flags;
    uint32_t i = lookup(e, key);
    if (i == NONE) {
        i = create_flow(e, key, src_low, p);
    }
    else if ((flow_at(e, i)->flags & CLOSING) && (flags & TCP_SYN) && !(flags & TCP_ACK)) {
        end_flow(e, i);  /* a new connection on a reused 5-tuple */
        i = create_flow(e, key, src_low, p);
    }
    else if (i != e->newest) {
        unlink_order(e, i);
        append_order(e, i);
    }
    if (i == NONE)
        return -1;

    flow_t *f = flow_at(e, i);
    f->packets++;
    f->last_seen = e->now;
    double gap_s = fp_double(ts - f->last_ts);
    f->last_ts = ts;
    if (flags & (TCP_FIN | TCP_RST))
        f->flags |= CLOSING;
    if (f->windows >= e->max_windows || !(e->rule_all || p->view.payload_len > 0))
        return 0;
    /* The packet goes from client to server when its sender is the client's endpoint. */
    int from_client = ((f->flags & CLIENT_LOW) != 0) == src_low;
    if (fp_vectorize_into(e->scratch, &e->vs, &p->view, from_client, gap_s, 0) < 0)
        return -1;
    if (f->buffered < e->window_packets - 1) {
        uint32_t item = pool_alloc(&e->vector_pool);
        if (item == NONE) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(vector_data(e, item), e->scratch, e->vec_bytes);
        append_vector(e, f, item);
        f->buffered++;
        return 0;
    }
    return emit_window(e, i, ts);
}

static int check_room(EngineObject *e)
{
    if (e->pending_count < e->pending_capacity)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "the pending windows are full: run decide() or "
                    "take_windows() before adding packets");
    return -1;
}

static void table_packet_of_decoded(const fp_decoded *d, double ts, table_packet *p)
{
    p->ts = ts;
    p->src = d->ip + d->addr_at;
    p->dst = d->ip + d->addr_at + d->addr_len;
    p->addr_len = d->addr_len;
    fp_view_of_decoded(d, &p->view);
}

/* process(ts, linktype, frame, wire_len) -> bool */
static PyObject *engine_process(EngineObject *e, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "process() takes 4 arguments");
        return NULL;
    }
    if (check_room(e) < 0)
        return NULL;
    PyObject *frame = args[2];
    long linktype;
    long long wire_len;
    if (!PyFloat_CheckExact(args[0]) || !fp_record_args(args, &linktype, &wire_len))
        Py_RETURN_FALSE;
    fp_decoded d;
    if (!fp_decode_frame(linktype, (const unsigned char *)PyBytes_AS_STRING(frame),
                         PyBytes_GET_SIZE(frame), wire_len, &d))
        Py_RETURN_FALSE;
    table_packet p;
    table_packet_of_decoded(&d, PyFloat_AS_DOUBLE(args[0]), &p);
    if (engine_add(e, &p) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* add_packet(pkt): a Packet that the Python decoder made. */
static PyObject *engine_add_packet(EngineObject *e, PyObject *pkt)
{
    if (check_room(e) < 0)
        return NULL;
    table_packet p;
    if (fp_view_of_packet(pkt, &p.view) < 0 ||
        fp_packet_endpoints(pkt, &p.ts, &p.src, &p.dst, &p.addr_len) < 0)
        return NULL;
    if (engine_add(e, &p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static inline uint32_t read_u32(const unsigned char *p, int little)
{
    if (little)
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return (uint32_t)p[3] | (uint32_t)p[2] << 8 | (uint32_t)p[1] << 16 | (uint32_t)p[0] << 24;
}

/* The hash of the flow key of the pcap record at `at`, or NONE when the record is not
 * complete in the buffer or not for the fast decoder. Used only to prefetch. */
static uint32_t record_hash(const EngineObject *e, const unsigned char *data, Py_ssize_t len,
                            Py_ssize_t at, int little, long linktype, unsigned long max_record)
{
    if (at < 0 || len - at < 16)
        return NONE;
    const unsigned char *h = data + at;
    uint32_t caplen = read_u32(h + 8, little), wire = read_u32(h + 12, little);
    if (caplen > max_record || (Py_ssize_t)caplen > len - at - 16)
        return NONE;
    fp_decoded d;
    if (!fp_decode_frame(linktype, h + 16, caplen, wire > caplen ? wire : caplen, &d))
        return NONE;
    table_packet p;
    table_packet_of_decoded(&d, 0.0, &p);
    unsigned char key[KEY_BYTES];
    build_key(&p, key);
    return key_hash(e, key);
}

/* The offset of the record after the one at `at`, or -1 when it is not in the buffer. */
static Py_ssize_t next_record(const unsigned char *data, Py_ssize_t len, Py_ssize_t at,
                              int little)
{
    if (at < 0 || len - at < 16)
        return -1;
    uint32_t caplen = read_u32(data + at + 8, little);
    /* Compared unsigned: where Py_ssize_t has 32 bits, a caplen from 2**31 on would turn
     * negative and point back into the buffer. */
    if (caplen > (size_t)(len - at - 16))
        return -1;
    return at + 16 + (Py_ssize_t)caplen;
}

/* feed(buf, pos, little_endian, tick, linktype, max_record, max_records)
 *     -> (pos, records, status, detail)
 *
 * Consumes the complete classic pcap records of `buf` from offset `pos`, at most
 * `max_records` of them, with the record arithmetic of CaptureFile and PcapSlicer. The
 * status gives why it stopped:
 *   FEED_NEED_DATA  at the first record that does not fit in `buf` or whose captured
 *                   length exceeds `max_record`; the Python reader takes that record.
 *   FEED_BATCH_FULL after the record that filled the pending windows.
 *   FEED_HANDBACK   after a record that the fast decoder does not take. `detail` is that
 *                   record as (ts, linktype, frame, wire_len), for the Python decoder.
 *   FEED_LIMIT      after `max_records` records.
 *   FEED_ERROR      after a record whose packet raised in the table; `detail` is the
 *                   exception.
 * `pos` is the offset of the first record not consumed, and `records` counts the records
 * consumed, the last one included. */
static PyObject *engine_feed(EngineObject *e, PyObject *args)
{
    Py_buffer buf;
    PyObject *linktype_obj;
    Py_ssize_t pos, max_records;
    int little;
    double tick;
    unsigned long max_record;
    if (!PyArg_ParseTuple(args, "y*npdOkn", &buf, &pos, &little, &tick, &linktype_obj,
                          &max_record, &max_records))
        return NULL;
    long linktype = PyLong_AsLong(linktype_obj);
    const unsigned char *data = (const unsigned char *)buf.buf;
    const Py_ssize_t len = buf.len;
    if (linktype == -1 && PyErr_Occurred()) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (pos < 0 || pos > len) {
        PyErr_SetString(PyExc_ValueError, "pos is outside the buffer");
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (check_room(e) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    Py_ssize_t records = 0;
    int status = FEED_LIMIT;
    PyObject *detail = NULL;
    /* With many flows the table does not fit in the cache, and each lookup waits for two
     * loads from memory: the hash bucket and the flow's key. So while a record is
     * processed, the bucket of the record two ahead and the flow slot of the next record
     * are prefetched. The hashes are hints only: nothing is changed from them. With few
     * flows open the extra decoding cost more than it saved (0.07 s more CPU on the 980,370
     * records of benchmarks/data/mix_1m.pcap, x86-64), so it waits for PREFETCH_FLOWS. */
#if defined(__GNUC__)
    const int prefetch = e->count >= PREFETCH_FLOWS;
    Py_ssize_t ahead_pos = prefetch ? next_record(data, len, pos, little) : -1;
    uint32_t ahead_hash = record_hash(e, data, len, ahead_pos, little, linktype, max_record);
#endif
    while (records < max_records) {
#if defined(__GNUC__)
        if (prefetch && ahead_hash != NONE) {
            uint32_t slot = e->buckets[ahead_hash & e->bucket_mask];
            if (slot != NONE)
                __builtin_prefetch(flow_at(e, slot));
        }
        if (prefetch) {
            ahead_pos = next_record(data, len, ahead_pos, little);
            ahead_hash = record_hash(e, data, len, ahead_pos, little, linktype, max_record);
            if (ahead_hash != NONE)
                __builtin_prefetch(&e->buckets[ahead_hash & e->bucket_mask]);
        }
#endif
        if (len - pos < 16) {
            status = FEED_NEED_DATA;
            break;
        }
        const unsigned char *h = data + pos;
        uint32_t sec = read_u32(h, little), frac = read_u32(h + 4, little);
        uint32_t caplen = read_u32(h + 8, little), wire = read_u32(h + 12, little);
        if (caplen > max_record || (Py_ssize_t)caplen > len - pos - 16) {
            status = FEED_NEED_DATA;
            break;
        }
        /* Same arithmetic as the Python reader's `sec + frac * tick`, rounded where it rounds. */
        double ts = fp_double((double)sec + fp_double((double)frac * tick));
        long long wire_len = wire > caplen ? wire : caplen;
        const unsigned char *frame = h + 16;
        pos += 16 + caplen;
        records++;
        fp_decoded d;
        if (!fp_decode_frame(linktype, frame, caplen, wire_len, &d)) {
            detail = Py_BuildValue("(dOy#L)", ts, linktype_obj, (const char *)frame,
                                   (Py_ssize_t)caplen, wire_len);
            if (detail == NULL) {
                PyBuffer_Release(&buf);
                return NULL;
            }
            status = FEED_HANDBACK;
            break;
        }
        table_packet p;
        table_packet_of_decoded(&d, ts, &p);
        if (engine_add(e, &p) < 0) {
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            Py_XDECREF(type);
            Py_XDECREF(traceback);
            detail = value != NULL ? value : Py_NewRef(Py_None);
            status = FEED_ERROR;
            break;
        }
        if (e->pending_count >= e->pending_capacity) {
            status = FEED_BATCH_FULL;
            break;
        }
    }
    PyBuffer_Release(&buf);
    if (detail == NULL)
        detail = Py_NewRef(Py_None);
    return Py_BuildValue("(nniN)", pos, records, status, detail);
}

/* ---- clock ---------------------------------------------------------------------------- */

/* advance(now): move the clock to a live link's wall clock and expire idle flows. */
static PyObject *engine_advance(EngineObject *e, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (!e->have_now || now <= e->now)
        Py_RETURN_NONE;
    e->now = now;
    e->next_expiry = fp_double(now + e->expiry_interval_s);
    expire(e, now);
    Py_RETURN_NONE;
}

/* flush(): end every flow, oldest first. */
static PyObject *engine_flush(EngineObject *e, PyObject *unused)
{
    (void)unused;
    while (e->oldest != NONE)
        end_flow(e, e->oldest);
    Py_RETURN_NONE;
}

/* ---- decisions and output ------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, capacity;
} text_t;

static int text_reserve(text_t *t, size_t more)
{
    if (t->len + more <= t->capacity)
        return 0;
    size_t capacity = t->capacity ? t->capacity : 4096;
    while (capacity < t->len + more)
        capacity *= 2;
    char *data = PyMem_Realloc(t->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->data = data;
    t->capacity = capacity;
    return 0;
}

static int text_add(text_t *t, const char *s, size_t n)
{
    if (text_reserve(t, n) < 0)
        return -1;
    memcpy(t->data + t->len, s, n);
    t->len += n;
    return 0;
}

static int text_add_str(text_t *t, const char *s)
{
    return text_add(t, s, strlen(s));
}

/* Python's round(x, digits) for a finite x: the correctly rounded decimal with `digits`
 * digits after the point, read back as a double (what float.__round__ computes). Returns
 * -1 with a Python exception set on failure. */
static int round_double(double x, int digits, double *out)
{
    if (!isfinite(x)) {
        *out = x;
        return 0;
    }
    char *fixed = PyOS_double_to_string(x, 'f', digits, 0, NULL);
    if (fixed == NULL)
        return -1;
    double rounded = PyOS_string_to_double(fixed, NULL, NULL);
    PyMem_Free(fixed);
    if (rounded == -1.0 && PyErr_Occurred())
        return -1;
    *out = rounded;
    return 0;
}

static int text_add_uint(text_t *t, unsigned long long value)
{
    char digits[24];
    int n = 0;
    do {
        digits[sizeof(digits) - 1 - n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    return text_add(t, digits + sizeof(digits) - n, n);
}

#ifdef __SIZEOF_INT128__
/* repr(round(x, digits)) for 1e-4 <= x < 2**33 and digits 1 to 6, with exact integer
 * arithmetic. Returns the length written to `out`, or 0 outside that range.
 *
 * round() rounds the exact binary value of x to `digits` decimals, ties to even. Below
 * 2**33 the spacing of doubles is under 1e-6, so any other decimal of at most `digits`
 * decimals lies more than half a spacing from the rounded double. The shortest string
 * that repr finds is therefore that decimal without its trailing zeros (at least one
 * decimal stays).
 * From 1e-4 on, repr writes no exponent. tests/test_engine.py checks this against Python. */
static int format_rounded_fast(double x, int digits, char *out)
{
    static const uint64_t scale[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    if (!(x >= 1e-4 && x < 8589934592.0) || digits < 1 || digits > 6)
        return 0;
    int exponent;
    double mantissa = frexp(x, &exponent);  /* x = mantissa * 2**exponent, 0.5 <= mantissa < 1 */
    uint64_t m = (uint64_t)ldexp(mantissa, 53);
    int shift = 53 - exponent;  /* x = m / 2**shift, with 20 <= shift <= 66 here */
    unsigned __int128 n = (unsigned __int128)m * scale[digits];
    unsigned __int128 q = n >> shift;
    unsigned __int128 rest = n - (q << shift), half = (unsigned __int128)1 << (shift - 1);
    if (rest > half || (rest == half && (q & 1)))
        q++;
    uint64_t whole = (uint64_t)(q / scale[digits]), fraction = (uint64_t)(q % scale[digits]);
    char reversed[24];
    int count = 0, length = 0;
    do {
        reversed[count++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    while (count)
        out[length++] = reversed[--count];
    out[length++] = '.';
    for (int d = digits - 1; d >= 0; d--) {  /* the fraction with its leading zeros */
        out[length + d] = (char)('0' + fraction % 10);
        fraction /= 10;
    }
    length += digits;
    while (out[length - 1] == '0' && out[length - 2] != '.')  /* one decimal always stays */
        length--;
    return length;
}
#endif

/* Append repr(round(x, digits)) as json.dumps writes it. */
static int text_add_rounded(text_t *t, double x, int digits)
{
#ifdef __SIZEOF_INT128__
    char fast[48];
    int length = format_rounded_fast(x, digits, fast);
    if (length > 0)
        return text_add(t, fast, (size_t)length);
#endif
    double rounded;
    if (round_double(x, digits, &rounded) < 0)
        return -1;
    if (isnan(rounded))
        return text_add_str(t, "NaN");
    if (isinf(rounded))
        return text_add_str(t, rounded > 0 ? "Infinity" : "-Infinity");
    char *repr = PyOS_double_to_string(rounded, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (repr == NULL)
        return -1;
    int status = text_add_str(t, repr);
    PyMem_Free(repr);
    return status;
}

/* The endpoints of a pending window, client first. */
typedef struct {
    int proto;
    char client[INET6_ADDRSTRLEN], server[INET6_ADDRSTRLEN];
    const unsigned char *client_addr, *server_addr;
    Py_ssize_t addr_len;
    unsigned client_port, server_port;
} endpoints_t;

static void endpoints_of(const pending_t *p, endpoints_t *out, int as_text)
{
    const unsigned char *k = p->key;
    Py_ssize_t alen = k[1];
    const unsigned char *low = k + 6, *high = k + 6 + alen;
    unsigned low_port = (unsigned)k[2] << 8 | k[3], high_port = (unsigned)k[4] << 8 | k[5];
    out->proto = k[0];
    out->addr_len = alen;
    out->client_addr = p->client_low ? low : high;
    out->server_addr = p->client_low ? high : low;
    out->client_port = p->client_low ? low_port : high_port;
    out->server_port = p->client_low ? high_port : low_port;
    if (as_text) {
        int family = alen == 4 ? AF_INET : AF_INET6;
        inet_ntop(family, out->client_addr, out->client, sizeof(out->client));
        inet_ntop(family, out->server_addr, out->server, sizeof(out->server));
    }
}

/* The names of the record fields, in the order the runner writes them. */
enum { F_TS, F_PROTO, F_SRC_IP, F_SRC_PORT, F_DST_IP, F_DST_PORT, F_LABEL, F_CONFIDENCE,
       F_PACKETS, F_WINDOWS, F_COUNT };
static const char *field_names[F_COUNT] = {"ts", "proto", "src_ip", "src_port", "dst_ip",
                                           "dst_port", "label", "confidence", "packets",
                                           "windows"};
static PyObject *field_keys[F_COUNT];

static int append_record_text(EngineObject *e, text_t *t, const pending_t *p, int code,
                              double confidence, uint32_t results)
{
    endpoints_t ep;
    endpoints_of(p, &ep, 1);
    Py_ssize_t label_len;
    const char *label = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(e->label_json, code), &label_len);
    if (label == NULL)
        return -1;
    if (text_add_str(t, "{\"ts\": ") < 0 || text_add_rounded(t, p->ts, 6) < 0 ||
        text_add_str(t, ep.proto == 6 ? ", \"proto\": \"tcp\", \"src_ip\": \""
                                      : ", \"proto\": \"udp\", \"src_ip\": \"") < 0 ||
        text_add_str(t, ep.client) < 0)
        return -1;
    if (text_add_str(t, "\", \"src_port\": ") < 0 || text_add_uint(t, ep.client_port) < 0 ||
        text_add_str(t, ", \"dst_ip\": \"") < 0 || text_add_str(t, ep.server) < 0 ||
        text_add_str(t, "\", \"dst_port\": ") < 0 || text_add_uint(t, ep.server_port) < 0 ||
        text_add_str(t, ", \"label\": ") < 0 || text_add(t, label, label_len) < 0 ||
        text_add_str(t, ", \"confidence\": ") < 0 || text_add_rounded(t, confidence, 4) < 0 ||
        text_add_str(t, ", \"packets\": ") < 0 || text_add_uint(t, p->packets) < 0 ||
        text_add_str(t, ", \"windows\": ") < 0 || text_add_uint(t, results) < 0)
        return -1;
    return text_add_str(t, "}\n");
}

static PyObject *address_text(const unsigned char *addr, Py_ssize_t alen)
{
    char text[INET6_ADDRSTRLEN];
    inet_ntop(alen == 4 ? AF_INET : AF_INET6, addr, text, sizeof(text));
    return PyUnicode_FromString(text);
}

static PyObject *record_dict(EngineObject *e, const pending_t *p, int code, double confidence,
                             uint32_t results)
{
    endpoints_t ep;
    endpoints_of(p, &ep, 0);
    double ts, conf;
    if (round_double(p->ts, 6, &ts) < 0 || round_double(confidence, 4, &conf) < 0)
        return NULL;
    PyObject *values[F_COUNT];
    values[F_TS] = PyFloat_FromDouble(ts);
    values[F_PROTO] = PyUnicode_FromString(ep.proto == 6 ? "tcp" : "udp");
    values[F_SRC_IP] = address_text(ep.client_addr, ep.addr_len);
    values[F_SRC_PORT] = PyLong_FromUnsignedLong(ep.client_port);
    values[F_DST_IP] = address_text(ep.server_addr, ep.addr_len);
    values[F_DST_PORT] = PyLong_FromUnsignedLong(ep.server_port);
    values[F_LABEL] = Py_NewRef(PyTuple_GET_ITEM(e->label_names, code));
    values[F_CONFIDENCE] = PyFloat_FromDouble(conf);
    values[F_PACKETS] = PyLong_FromUnsignedLongLong(p->packets);
    values[F_WINDOWS] = PyLong_FromUnsignedLong(results);
    PyObject *record = PyDict_New();
    int failed = record == NULL;
    for (int k = 0; k < F_COUNT; k++) {
        if (!failed && (values[k] == NULL || PyDict_SetItem(record, field_keys[k], values[k]) < 0))
            failed = 1;
        Py_XDECREF(values[k]);
    }
    if (failed) {
        Py_XDECREF(record);
        return NULL;
    }
    return record;
}

/* decide(probabilities, as_text) -> (records, first)
 *
 * Combines the class probabilities of the pending windows (a float32 array of shape
 * (pending, classes), in pending order) into decisions with the rule of Pipeline.infer,
 * and empties the pending windows. `records` lists the output records, each one JSON line
 * (a str ending in a newline) when `as_text` is true, else a dict. `first` has one byte per
 * record: 1 for a flow's first decision, 0 for a later one that changed its label. The
 * caller counts them as it writes each record, as Pipeline.infer does, so that an output
 * that fails partway leaves the same counters. */
static PyObject *engine_decide(EngineObject *e, PyObject *args)
{
    PyObject *probs_obj;
    int as_text;
    if (!PyArg_ParseTuple(args, "Op", &probs_obj, &as_text))
        return NULL;
    if (e->classes == 0) {
        PyErr_SetString(PyExc_RuntimeError, "this engine was made without labels");
        return NULL;
    }
    Py_buffer probs;
    if (PyObject_GetBuffer(probs_obj, &probs, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    const Py_ssize_t n = e->pending_count;
    if (probs.ndim != 2 || probs.itemsize != 4 || strcmp(probs.format, "f") != 0 ||
        probs.shape[0] < n || probs.shape[1] != e->classes) {
        PyErr_Format(PyExc_ValueError, "expected float32 probabilities of shape (%zd, %zd)",
                     n, e->classes);
        PyBuffer_Release(&probs);
        return NULL;
    }
    const float *rows = probs.buf;
    const Py_ssize_t classes = e->classes;
    const int unknown_code = (int)classes;
    text_t text = {NULL, 0, 0};
    PyObject *records = PyList_New(0);
    /* 1 per record for a flow's first decision; a window makes at most one record. */
    unsigned char *first = PyMem_Malloc(n ? (size_t)n : 1);
    double *mean = PyMem_Malloc(sizeof(double) * classes * 2);
    Py_ssize_t written = 0;
    int failed = mean == NULL || first == NULL || records == NULL;
    if (mean == NULL || first == NULL)
        PyErr_NoMemory();
    double *single = mean + classes;
    for (Py_ssize_t w = 0; w < n && !failed; w++) {
        const pending_t *p = &e->pending[w];
        const float *row = rows + w * classes;
        decision_t *d = p->decision != NONE ? pool_at(&e->decision_pool, p->decision) : NULL;
        uint32_t results;
        int previous;
        double *sums;
        if (d == NULL) {
            results = 1;
            previous = -1;
            sums = single;
            for (Py_ssize_t c = 0; c < classes; c++)
                sums[c] = row[c];
        }
        else {
            results = ++d->results;
            previous = d->code;
            sums = d->sums;
            for (Py_ssize_t c = 0; c < classes; c++)
                sums[c] = results == 1 ? (double)row[c] : fp_double(sums[c] + (double)row[c]);
        }
        int best = 0;
        for (Py_ssize_t c = 0; c < classes; c++) {
            mean[c] = fp_double(sums[c] / results);
            if (mean[c] > mean[best])  /* the first of equal maxima, as np.argmax */
                best = (int)c;
        }
        double confidence = mean[best];
        int code = confidence >= e->threshold ? best : unknown_code;
        if (d != NULL) {
            d->code = code;
            release_decision(e, p->decision);
        }
        if (code == previous)
            continue;
        first[written++] = previous < 0;
        PyObject *record;
        if (as_text) {
            text.len = 0;
            record = append_record_text(e, &text, p, code, confidence, results) < 0 ? NULL
                     : PyUnicode_DecodeASCII(text.data, (Py_ssize_t)text.len, "strict");
        }
        else {
            record = record_dict(e, p, code, confidence, results);
        }
        failed = record == NULL || PyList_Append(records, record) < 0;
        Py_XDECREF(record);
    }
    PyBuffer_Release(&probs);
    PyMem_Free(mean);
    PyMem_Free(text.data);
    /* The windows are consumed even after a failure: their decision references are gone. */
    if (failed) {
        for (Py_ssize_t w = 0; w < n; w++)
            e->pending[w].decision = NONE;
    }
    e->pending_count = 0;
    if (failed) {
        PyMem_Free(first);
        Py_XDECREF(records);
        return NULL;
    }
    PyObject *kinds = PyBytes_FromStringAndSize((const char *)first, written);
    PyMem_Free(first);
    if (kinds == NULL) {
        Py_DECREF(records);
        return NULL;
    }
    return Py_BuildValue("(NN)", records, kinds);
}

/* take_windows() -> (windows, flows)
 *
 * Empties the pending windows without deciding: `windows` is their bytes, one row of
 * window_bytes per window, and `flows` lists per window (serial, proto, client address,
 * client port, server address, server port). */
static PyObject *engine_take_windows(EngineObject *e, PyObject *unused)
{
    (void)unused;
    const Py_ssize_t n = e->pending_count;
    PyObject *windows = PyBytes_FromStringAndSize((const char *)e->pending_windows,
                                                  n * e->window_bytes);
    PyObject *flows = PyList_New(n);
    if (windows == NULL || flows == NULL) {
        Py_XDECREF(windows);
        Py_XDECREF(flows);
        return NULL;
    }
    for (Py_ssize_t w = 0; w < n; w++) {
        const pending_t *p = &e->pending[w];
        endpoints_t ep;
        endpoints_of(p, &ep, 0);
        PyObject *item = Py_BuildValue("(Kiy#Iy#I)", (unsigned long long)p->serial, ep.proto,
                                       (const char *)ep.client_addr, ep.addr_len, ep.client_port,
                                       (const char *)ep.server_addr, ep.addr_len, ep.server_port);
        if (item == NULL) {
            Py_DECREF(windows);
            Py_DECREF(flows);
            return NULL;
        }
        PyList_SET_ITEM(flows, w, item);
    }
    for (Py_ssize_t w = 0; w < n; w++) {
        if (e->pending[w].decision != NONE)
            release_decision(e, e->pending[w].decision);
    }
    e->pending_count = 0;
    return Py_BuildValue("(NN)", windows, flows);
}

/* memory() -> dict of the bytes the engine has allocated, by part. */
static PyObject *engine_memory(EngineObject *e, PyObject *unused)
{
    (void)unused;
    size_t vectors = (size_t)e->vector_pool.nblocks * POOL_BLOCK_ITEMS * e->vector_pool.item_size;
    size_t decisions = (size_t)e->decision_pool.nblocks * POOL_BLOCK_ITEMS * e->decision_pool.item_size;
    return Py_BuildValue(
        "{s:n,s:n,s:n,s:n,s:n,s:n,s:I,s:I}",
        "flow_slot_bytes", (Py_ssize_t)e->slot_bytes,
        "flow_slots", (Py_ssize_t)((size_t)e->capacity * e->slot_bytes),
        "hash_buckets", (Py_ssize_t)((size_t)(e->bucket_mask + 1) * sizeof(uint32_t)),
        "vector_buffers", (Py_ssize_t)vectors,
        "decision_states", (Py_ssize_t)decisions,
        "pending", (Py_ssize_t)(e->pending_capacity * (e->window_bytes + (Py_ssize_t)sizeof(pending_t))),
        "vector_buffers_in_use", e->vector_pool.live,
        "decision_states_in_use", e->decision_pool.live);
}

/* ---- the type ------------------------------------------------------------------------- */

/* Read a count limit such as max_flows. PyArg_ParseTuple's "k" and "K" formats keep only the
 * low bits of an int, as many as unsigned long or unsigned long long has, so "k" read
 * 2**32 + 5 as 5 where long has 32 bits. Here a negative value or one beyond the unsigned
 * long long range becomes 0, which the caller rejects. Returns 0, or -1 with a Python
 * exception set for an object that is not an int. */
static int read_limit(PyObject *obj, unsigned long long *out)
{
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL)
        return -1;
    *out = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        *out = 0;
    }
    return 0;
}

static int engine_init(EngineObject *e, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"settings", "max_flows", "idle_timeout_s", "max_windows", "capacity",
                            "labels", "label_json", "threshold", "decisions", "serials", "seed",
                            "on_jump", NULL};
    PyObject *settings, *labels, *label_json, *on_jump, *max_flows_obj, *max_windows_obj;
    unsigned long long max_flows, max_windows, seed;
    double idle_timeout_s, threshold;
    Py_ssize_t capacity;
    int decisions, serials;
    if (e->flow_blocks != NULL || e->buckets != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Engine.__init__ runs once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOdOnO!O!dppKO", names, &settings,
                                     &max_flows_obj, &idle_timeout_s, &max_windows_obj,
                                     &capacity, &PyTuple_Type, &labels, &PyTuple_Type,
                                     &label_json, &threshold, &decisions, &serials, &seed,
                                     &on_jump))
        return -1;
    if (read_limit(max_flows_obj, &max_flows) < 0 || read_limit(max_windows_obj, &max_windows) < 0)
        return -1;
    if (max_flows < 1 || max_flows > NONE - 1 || max_windows < 1 || max_windows > NONE - 1 ||
        capacity < 1 || capacity > (1 << 24) || !(idle_timeout_s > 0)) {
        PyErr_SetString(PyExc_ValueError, "invalid engine limits: expected max_flows, max_windows "
                        "and capacity of at least 1 and a positive idle_timeout_s");
        return -1;
    }
    if (PyTuple_GET_SIZE(labels) != PyTuple_GET_SIZE(label_json) ||
        PyTuple_GET_SIZE(labels) == 1) {
        PyErr_SetString(PyExc_ValueError, "labels and label_json must have the same length, "
                        "the class names followed by the unknown label, or be empty");
        return -1;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(labels); k++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(labels, k)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(label_json, k)) ||
            !PyUnicode_IS_ASCII(PyTuple_GET_ITEM(label_json, k))) {
            PyErr_SetString(PyExc_TypeError, "labels must be str and label_json ASCII str");
            return -1;
        }
    }
    if (fp_read_settings(settings, &e->vs) < 0)
        return -1;
    PyObject *value = PyObject_GetAttrString(settings, "window_packets");
    if (value == NULL)
        return -1;
    long window_packets = PyLong_AsLong(value);
    Py_DECREF(value);
    if (window_packets == -1 && PyErr_Occurred())
        return -1;
    if (window_packets < 1 || window_packets > 16) {
        PyErr_SetString(PyExc_ValueError, "window_packets must be 1 to 16");
        return -1;
    }
    value = PyObject_GetAttrString(settings, "window_rule");
    if (value == NULL)
        return -1;
    int rule_all = PyUnicode_Check(value) && PyUnicode_CompareWithASCIIString(value, "all") == 0;
    Py_DECREF(value);

    e->window_packets = (int)window_packets;
    e->rule_all = rule_all;
    e->port_buckets = e->vs.context ? e->vs.port_buckets : 0;
    e->vec_bytes = fp_vector_length(&e->vs, 0);
    e->row_bytes = e->vec_bytes + e->port_buckets;
    e->window_bytes = e->row_bytes * window_packets;
    if (capacity > PY_SSIZE_T_MAX / e->window_bytes) {
        PyErr_Format(PyExc_ValueError, "capacity %zd times %zd bytes per window does not fit "
                     "in memory addresses; use a smaller batch", capacity, e->window_bytes);
        return -1;
    }
    e->max_flows = max_flows;
    e->idle_timeout_s = idle_timeout_s;
    e->expiry_interval_s = idle_timeout_s / 2 < 1.0 ? idle_timeout_s / 2 : 1.0;
    e->max_windows = (uint32_t)max_windows;
    e->decisions = decisions;
    e->serials = serials;
    e->slot_bytes = serials ? sizeof(flow_t) : FLOW_SLOT_BYTES_WITHOUT_SERIAL;
    e->seed = seed;
    e->on_jump = Py_NewRef(on_jump);
    e->classes = PyTuple_GET_SIZE(labels) ? PyTuple_GET_SIZE(labels) - 1 : 0;
    e->threshold = threshold;
    e->label_names = Py_NewRef(labels);
    e->label_json = Py_NewRef(label_json);

    e->flow_blocks = NULL;
    e->capacity = e->count = 0;
    e->free_head = e->oldest = e->newest = NONE;
    e->buckets = PyMem_Malloc(sizeof(uint32_t) * 1024);
    e->bucket_mask = 1023;
    /* The link, then the vector, rounded up to 4 bytes so that every link is aligned. */
    e->vector_pool.item_size = (sizeof(uint32_t) + e->vec_bytes + 3) / 4 * 4;
    e->vector_pool.free_head = NONE;
    e->decision_pool.item_size = sizeof(decision_t) + sizeof(double) * (e->classes ? e->classes : 1);
    e->decision_pool.free_head = NONE;
    e->scratch = PyMem_Malloc(e->vec_bytes);
    e->pending_capacity = capacity;
    e->pending_windows = PyMem_Malloc((size_t)capacity * e->window_bytes);
    e->pending = PyMem_Malloc(sizeof(pending_t) * capacity);
    if (e->buckets == NULL || e->scratch == NULL || e->pending_windows == NULL || e->pending == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(e->buckets, 0xFF, sizeof(uint32_t) * 1024);
    return 0;
}

/* An engine whose __init__ has not run is empty: every method works on no flows. */
static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    EngineObject *e = (EngineObject *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    e->free_head = e->oldest = e->newest = NONE;
    e->vector_pool.free_head = e->decision_pool.free_head = NONE;
    return (PyObject *)e;
}

static int engine_traverse(EngineObject *e, visitproc visit, void *arg)
{
    Py_VISIT(e->on_jump);
    return 0;
}

static int engine_clear(EngineObject *e)
{
    Py_CLEAR(e->on_jump);
    return 0;
}

static void engine_dealloc(EngineObject *e)
{
    PyObject_GC_UnTrack(e);
    engine_clear(e);

    Py_CLEAR(e->label_names);
    Py_CLEAR(e->label_json);
    for (uint32_t b = 0; e->flow_blocks != NULL && b * FLOW_BLOCK_SLOTS < e->capacity; b++)
        PyMem_Free(e->flow_blocks[b]);
    PyMem_Free(e->flow_blocks);
    PyMem_Free(e->buckets);
    PyMem_Free(e->scratch);
    PyMem_Free(e->pending_windows);
    PyMem_Free(e->pending);
    pool_release(&e->vector_pool);
    pool_release(&e->decision_pool);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

/* The buffer protocol exports the pending windows: capacity rows of window_bytes, of which
 * the first `pending` are filled. The buffer never moves while the engine lives. */
static int engine_getbuffer(EngineObject *e, Py_buffer *view, int flags)
{
    if (e->pending_windows == NULL) {
        PyErr_SetString(PyExc_BufferError, "the engine is not initialized");
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)e, e->pending_windows,
                             e->pending_capacity * e->window_bytes, 1, flags);
}

static PyBufferProcs engine_as_buffer = {
    .bf_getbuffer = (getbufferproc)engine_getbuffer,
};

static Py_ssize_t engine_length(EngineObject *e)
{
    return e->count;
}

static PySequenceMethods engine_as_sequence = {
    .sq_length = (lenfunc)engine_length,
};

static PyObject *engine_get_now(EngineObject *e, void *closure)
{
    (void)closure;
    if (!e->have_now)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(e->now);
}

static PyGetSetDef engine_getset[] = {
    {"now", (getter)engine_get_now, NULL, "The table clock: the largest time stamp seen.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define COUNTER(name, doc) {#name, T_ULONGLONG, offsetof(EngineObject, name), READONLY, doc}

static PyMemberDef engine_members[] = {
    COUNTER(packets, "Packets accounted to flows."),
    COUNTER(flows_created, "Flows created."),
    COUNTER(evictions, "Flows evicted because the table was full."),
    COUNTER(expirations, "Flows expired after the idle timeout."),
    COUNTER(too_short, "Flows that left the table before their first window."),
    COUNTER(windows, "Windows completed."),
    COUNTER(time_jumps_back, "Packets stamped more than 1 s before the clock."),
    COUNTER(time_jumps_forward, "Forward time stamp jumps over 10 idle timeouts."),
    {"pending", T_PYSSIZET, offsetof(EngineObject, pending_count), READONLY,
     "Windows waiting for decide() or take_windows()."},
    {"capacity", T_PYSSIZET, offsetof(EngineObject, pending_capacity), READONLY,
     "Windows that can wait; a full engine takes no packets."},
    {"window_bytes", T_PYSSIZET, offsetof(EngineObject, window_bytes), READONLY,
     "Bytes of one window."},
    {"max_windows", T_UINT, offsetof(EngineObject, max_windows), READONLY, "Windows per flow."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef engine_methods[] = {
    {"process", (PyCFunction)(void (*)(void))engine_process, METH_FASTCALL,
     "process(ts, linktype, frame, wire_len) -> bool: decode a record and add its packet. "
     "False leaves the record to the Python decoder, untouched."},
    {"add_packet", (PyCFunction)engine_add_packet, METH_O,
     "add_packet(pkt): add a Packet made by the Python decoder."},
    {"feed", (PyCFunction)engine_feed, METH_VARARGS,
     "feed(buf, pos, little_endian, tick, linktype, max_record, max_records) -> "
     "(pos, records, status, detail): consume classic pcap records from a buffer."},
    {"advance", (PyCFunction)engine_advance, METH_O,
     "advance(now): move the clock forward to `now` and expire idle flows."},
    {"flush", (PyCFunction)engine_flush, METH_NOARGS, "flush(): end every flow."},
    {"decide", (PyCFunction)engine_decide, METH_VARARGS,
     "decide(probabilities, as_text) -> (records, first): decide the pending windows."},
    {"take_windows", (PyCFunction)engine_take_windows, METH_NOARGS,
     "take_windows() -> (windows, flows): empty the pending windows without deciding."},
    {"memory", (PyCFunction)engine_memory, METH_NOARGS,
     "memory() -> dict: bytes allocated by the engine, by part."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject FpEngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edge_etc._fastpath.Engine",
    .tp_doc = PyDoc_STR("Engine(settings, max_flows, idle_timeout_s, max_windows, capacity, "
                        "labels, label_json, threshold, decisions, serials, seed, on_jump): the "
                        "compiled flow table, windowing and decision rule."),
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = engine_new,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_traverse = (traverseproc)engine_traverse,
    .tp_clear = (inquiry)engine_clear,
    .tp_as_buffer = &engine_as_buffer,
    .tp_as_sequence = &engine_as_sequence,
    .tp_members = engine_members,
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
};

/* format_rounded(x, digits) -> str: repr(round(x, digits)) as the records write it, for
 * tests that compare it with Python. */
PyObject *fp_format_rounded(PyObject *module, PyObject *args)
{
    (void)module;
    double x;
    int digits;
    if (!PyArg_ParseTuple(args, "di", &x, &digits))
        return NULL;
    if (digits < 0 || digits > 17) {
        PyErr_SetString(PyExc_ValueError, "digits must be 0 to 17");
        return NULL;
    }
    text_t t = {NULL, 0, 0};
    if (text_add_rounded(&t, x, digits) < 0) {
        PyMem_Free(t.data);
        return NULL;
    }
    PyObject *out = PyUnicode_DecodeASCII(t.data, (Py_ssize_t)t.len, "strict");
    PyMem_Free(t.data);
    return out;
}

int fp_engine_ready(void)
{
    for (int k = 0; k < F_COUNT; k++) {
        if (field_keys[k] == NULL) {
            field_keys[k] = PyUnicode_InternFromString(field_names[k]);
            if (field_keys[k] == NULL)
                return -1;
        }
    }
    return PyType_Ready(&FpEngineType);
}

_Static_assert(FLOW_SLOT_BYTES_WITHOUT_SERIAL % 8 == 0, "flow slots must stay 8-byte aligned");

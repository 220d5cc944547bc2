/* Compiled fast path for the per-packet work of edge-etc: slicing classic pcap records,
 * decoding the common frame layouts, and building model vectors.
 *
 * Every function here handles only the common case and hands everything else back to the
 * pure-Python code, which stays the reference. `decode` returns None for any frame it does
 * not fully understand, and the Python decoder then produces the packet or the exact error.
 * `PcapSlicer` stops at the first record that does not fit in its buffer or looks
 * implausible, and the Python reader then refills or reports it. The results must equal the
 * Python code's byte for byte; tests/test_fastpath.py compares whole runs of both.
 *
 * Python's own edge_etc.fastpath module decides whether this module is used.
 */

#include "_fastpath.h"
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>


/* ---- Packet ------------------------------------------------------------------------- */

/* The decoded packet, with the fields and meaning of the pure-Python `Packet` in
 * edge_etc/decode.py. Every field is a Python object, exactly as the Python class stores
 * it, so both kinds read back the same values. */
typedef struct {
    PyObject_HEAD
    PyObject *ts;
    PyObject *version;
    PyObject *proto;
    PyObject *src;
    PyObject *dst;
    PyObject *sport;
    PyObject *dport;
    PyObject *ip;
    PyObject *l4_offset;
    PyObject *l4_len;
    PyObject *payload_len;
    PyObject *tcp_flags;
    PyObject *truncated;
} PacketObject;

#define PACKET_FIELDS 13


static PyObject **packet_slots(PacketObject *p)
{
    return &p->ts;
}

static int packet_traverse(PacketObject *self, visitproc visit, void *arg)
{
    PyObject **slots = packet_slots(self);
    for (int i = 0; i < PACKET_FIELDS; i++)
        Py_VISIT(slots[i]);
    return 0;
}

static int packet_clear(PacketObject *self)
{
    PyObject **slots = packet_slots(self);
    for (int i = 0; i < PACKET_FIELDS; i++)
        Py_CLEAR(slots[i]);
    return 0;
}

static void packet_dealloc(PacketObject *self)
{
    PyObject_GC_UnTrack(self);
    packet_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Take ownership of the PACKET_FIELDS references in `values`. */
static PyObject *packet_build(PyObject **values)
{
    PacketObject *self = PyObject_GC_New(PacketObject, &FpPacketType);
    if (self == NULL) {
        for (int i = 0; i < PACKET_FIELDS; i++)
            Py_XDECREF(values[i]);
        return NULL;
    }
    PyObject **slots = packet_slots(self);
    for (int i = 0; i < PACKET_FIELDS; i++)
        slots[i] = values[i];
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *packet_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Packet() takes positional arguments only");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != PACKET_FIELDS) {
        PyErr_Format(PyExc_TypeError, "Packet() takes %d positional arguments (%zd given)",
                     PACKET_FIELDS, PyTuple_GET_SIZE(args));
        return NULL;
    }
    PyObject *values[PACKET_FIELDS];
    for (int i = 0; i < PACKET_FIELDS; i++) {
        values[i] = PyTuple_GET_ITEM(args, i);
        Py_INCREF(values[i]);
    }
    (void)type;
    return packet_build(values);
}

#define PACKET_MEMBER(name) \
    {#name, T_OBJECT_EX, offsetof(PacketObject, name), 0, NULL}

static PyMemberDef packet_members[] = {
    PACKET_MEMBER(ts), PACKET_MEMBER(version), PACKET_MEMBER(proto), PACKET_MEMBER(src),
    PACKET_MEMBER(dst), PACKET_MEMBER(sport), PACKET_MEMBER(dport), PACKET_MEMBER(ip),
    PACKET_MEMBER(l4_offset), PACKET_MEMBER(l4_len), PACKET_MEMBER(payload_len),
    PACKET_MEMBER(tcp_flags), PACKET_MEMBER(truncated),
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject FpPacketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edge_etc._fastpath.Packet",
    .tp_doc = PyDoc_STR("A decoded TCP or UDP packet (see edge_etc.decode.Packet)."),
    .tp_basicsize = sizeof(PacketObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = packet_new,
    .tp_dealloc = (destructor)packet_dealloc,
    .tp_traverse = (traverseproc)packet_traverse,
    .tp_clear = (inquiry)packet_clear,
    .tp_members = packet_members,
};

/* ---- decoding ----------------------------------------------------------------------- */

static inline unsigned u16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* Mirror of decode._tcp_options_valid. */
static int tcp_options_valid(const unsigned char *ip, Py_ssize_t p, Py_ssize_t end)
{
    while (p < end) {
        unsigned kind = ip[p];
        if (kind == 0)
            return 1;
        if (kind == 1) {
            p += 1;
            continue;
        }
        if (p + 1 >= end)
            return 0;
        unsigned length = ip[p + 1];
        if (length < 2 || p + (Py_ssize_t)length > end)
            return 0;
        p += length;
    }
    return 1;
}

/* Offset of the IP header for the common link layers, or -1 to leave the frame to Python:
 * Ethernet with up to two VLAN tags, raw IP, and Linux cooked v1 and v2. */
static Py_ssize_t fast_ip_offset(long linktype, const unsigned char *f, Py_ssize_t n)
{
    Py_ssize_t off;
    unsigned etype;
    switch (linktype) {
    case 1:
        if (n < 14)
            return -1;
        off = 14;
        etype = u16(f + 12);
        for (int tags = 0; tags < 2 && (etype == 0x8100 || etype == 0x88A8); tags++) {
            if (n < off + 4)
                return -1;
            etype = u16(f + off + 2);
            off += 4;
        }
        break;
    case 12: case 14: case 101: case 228: case 229:
        return 0;
    case 113:
        if (n < 16)
            return -1;
        off = 16;
        etype = u16(f + 14);
        break;
    case 276:
        if (n < 20)
            return -1;
        off = 20;
        etype = u16(f);
        break;
    default:
        return -1;
    }
    if (etype == 0x0800 || etype == 0x86DD)
        return off;
    return -1;
}

/* Decodes an unfragmented IPv4 or IPv6 (no extension headers) TCP or UDP packet whose
 * headers are consistent, exactly as edge_etc.decode.Decoder.decode does, and returns 1.
 * Returns 0 for anything else, so that the Python decoder takes it and gives the same
 * packet, fragment handling or error. */
int fp_decode_frame(long linktype, const unsigned char *f, Py_ssize_t flen, long long wire_len,
                    fp_decoded *out)
{
    Py_ssize_t off = fast_ip_offset(linktype, f, flen);
    if (off < 0)
        return 0;
    int have_wire = wire_len >= 0;
    long long wire_ip_len = have_wire ? wire_len - off : 0;

    const unsigned char *ip = f + off;
    Py_ssize_t n = flen - off;
    if (n < 1)
        return 0;
    int version = ip[0] >> 4;
    long long total;
    Py_ssize_t l4;
    unsigned proto;
    Py_ssize_t addr_at, addr_len;
    if (version == 4) {
        Py_ssize_t ihl = (ip[0] & 0x0F) * 4;
        if (ihl < 20 || n < ihl)
            return 0;
        total = u16(ip + 2);
        if (total == 0)
            total = have_wire ? wire_ip_len : n;
        else if (total < ihl)
            return 0;
        else if (have_wire && total > wire_ip_len)
            return 0;
        if (u16(ip + 6) & 0x3FFF)  /* a fragment: reassembly is Python's */
            return 0;
        proto = ip[9];
        l4 = ihl;
        addr_at = 12;
        addr_len = 4;
    }
    else if (version == 6) {
        if (n < 40)
            return 0;
        unsigned plen = u16(ip + 4);
        total = plen ? 40 + (long long)plen : (have_wire ? wire_ip_len : n);
        if (have_wire && total > wire_ip_len)
            return 0;
        proto = ip[6];  /* extension headers are left to Python */
        l4 = 40;
        if (l4 > total)
            return 0;
        addr_at = 8;
        addr_len = 16;
    }
    else {
        return 0;
    }

    unsigned sport, dport, flags = 0;
    long long l4_len;
    if (proto == 6) {
        if (n < l4 + 4)
            return 0;
        sport = u16(ip + l4);
        dport = u16(ip + l4 + 2);
        if (n >= l4 + 14) {
            Py_ssize_t doff = (ip[l4 + 12] >> 4) * 4;
            if (doff < 20 || l4 + doff > total)
                return 0;
            if (doff > 20 && n >= l4 + doff && !tcp_options_valid(ip, l4 + 20, l4 + doff))
                return 0;
            flags = ip[l4 + 13];
            l4_len = doff;
        }
        else {
            l4_len = 20;
            if (l4 + 20 > total)
                return 0;
        }
    }
    else if (proto == 17) {
        if (n < l4 + 4 || l4 + 8 > total)
            return 0;
        sport = u16(ip + l4);
        dport = u16(ip + l4 + 2);
        l4_len = 8;
    }
    else {
        return 0;
    }
    out->ip = ip;
    out->n = n;
    out->version = version;
    out->proto = proto;
    out->addr_at = addr_at;
    out->addr_len = addr_len;
    out->sport = sport;
    out->dport = dport;
    out->flags = flags;
    out->l4 = l4;
    out->l4_len = l4_len;
    out->total = total;
    return 1;
}

void fp_view_of_decoded(const fp_decoded *d, fp_packet_view *view)
{
    view->ip = d->ip;
    view->n = d->n;
    view->l4 = d->l4;
    view->l4_len = (Py_ssize_t)d->l4_len;
    view->proto = d->proto;
    view->version = d->version;
    view->payload_len = d->total - d->l4 - d->l4_len;
    view->sport = d->sport;
    view->dport = d->dport;
    view->flags = d->flags;
}

int fp_record_args(PyObject *const *args, long *linktype, long long *wire_len)
{
    PyObject *frame = args[2], *wire_obj = args[3];
    if (!PyBytes_CheckExact(frame) || !PyLong_CheckExact(args[1]))
        return 0;
    *linktype = PyLong_AsLong(args[1]);
    if (*linktype == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *wire_len = -1;
    if (wire_obj != Py_None) {
        if (!PyLong_CheckExact(wire_obj))
            return 0;
        int overflow = 0;
        *wire_len = PyLong_AsLongLongAndOverflow(wire_obj, &overflow);
        /* No capture has a negative wire length, so Python decides what one means. Leaving
         * it to Python also keeps the subtraction in fp_decode_frame from overflowing. */
        if (overflow || *wire_len < 0) {
            PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

/* decode(ts, linktype, frame, wire_len) -> Packet or None
 *
 * fp_decode_frame for Python: a Packet, or None to leave the frame to the Python decoder. */
static PyObject *fast_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode() takes 4 arguments");
        return NULL;
    }
    PyObject *ts = args[0], *frame = args[2];
    long linktype;
    long long wire_len;
    if (!fp_record_args(args, &linktype, &wire_len))
        Py_RETURN_NONE;
    const unsigned char *f = (const unsigned char *)PyBytes_AS_STRING(frame);
    Py_ssize_t flen = PyBytes_GET_SIZE(frame);
    fp_decoded d;
    if (!fp_decode_frame(linktype, f, flen, wire_len, &d))
        Py_RETURN_NONE;

    PyObject *values[PACKET_FIELDS];
    values[0] = Py_NewRef(ts);
    values[1] = PyLong_FromLong(d.version);
    values[2] = PyLong_FromLong(d.proto);
    PyObject *ip_obj;
    if (d.ip == f)
        ip_obj = Py_NewRef(frame);
    else
        ip_obj = PyBytes_FromStringAndSize((const char *)d.ip, d.n);
    values[3] = PyBytes_FromStringAndSize((const char *)d.ip + d.addr_at, d.addr_len);
    values[4] = PyBytes_FromStringAndSize((const char *)d.ip + d.addr_at + d.addr_len, d.addr_len);
    values[5] = PyLong_FromLong(d.sport);
    values[6] = PyLong_FromLong(d.dport);
    values[7] = ip_obj;
    values[8] = PyLong_FromSsize_t(d.l4);
    values[9] = PyLong_FromLongLong(d.l4_len);
    values[10] = PyLong_FromLongLong(d.total - d.l4 - d.l4_len);
    values[11] = PyLong_FromLong(d.flags);
    values[12] = PyBool_FromLong(d.n < d.total);
    for (int i = 0; i < PACKET_FIELDS; i++) {
        if (values[i] == NULL) {
            for (int j = 0; j < PACKET_FIELDS; j++)
                Py_XDECREF(values[j]);
            return NULL;
        }
    }
    return packet_build(values);
}

/* ---- pcap record slicer ------------------------------------------------------------- */

/* Iterator over the complete records of a classic pcap buffer, from a start offset.
 * Yields (ts, linktype, frame, max(wire_len, caplen)) like CaptureFile. It stops, without
 * an error, at the first record whose header or data does not fit in the buffer or whose
 * captured length exceeds the maximum. `pos` is then that record's offset and `count` the
 * number of records yielded, and the Python reader takes over from there. */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
    Py_ssize_t pos;
    Py_ssize_t count;
    int little;
    double tick;
    PyObject *linktype;
    unsigned long max_record;
} SlicerObject;

static PyTypeObject SlicerType;

static PyObject *slicer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"buf", "pos", "little_endian", "tick", "linktype", "max_record", NULL};
    SlicerObject *self = (SlicerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    PyObject *linktype;
    int little;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*npdOk", names, &self->view, &self->pos,
                                     &little, &self->tick, &linktype, &self->max_record)) {
        Py_DECREF(self);
        return NULL;
    }
    if (self->pos < 0 || self->pos > self->view.len) {
        PyErr_SetString(PyExc_ValueError, "pos is outside the buffer");
        Py_DECREF(self);
        return NULL;
    }
    self->little = little;
    self->linktype = Py_NewRef(linktype);
    return (PyObject *)self;
}

static void slicer_dealloc(SlicerObject *self)
{
    if (self->view.obj != NULL)
        PyBuffer_Release(&self->view);
    Py_XDECREF(self->linktype);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline uint32_t read_u32(const unsigned char *p, int little)
{
    if (little)
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return (uint32_t)p[3] | (uint32_t)p[2] << 8 | (uint32_t)p[1] << 16 | (uint32_t)p[0] << 24;
}

static PyObject *slicer_next(SlicerObject *self)
{
    const unsigned char *buf = (const unsigned char *)self->view.buf;
    Py_ssize_t len = self->view.len, pos = self->pos;
    if (len - pos < 16)
        return NULL;
    const unsigned char *h = buf + pos;
    uint32_t sec = read_u32(h, self->little);
    uint32_t frac = read_u32(h + 4, self->little);
    uint32_t caplen = read_u32(h + 8, self->little);
    uint32_t wire_len = read_u32(h + 12, self->little);
    if (caplen > self->max_record || (Py_ssize_t)caplen > len - pos - 16)
        return NULL;
    /* Same arithmetic as the Python reader's `sec + frac * tick`, rounded where it rounds. */
    double ts = fp_double((double)sec + fp_double((double)frac * self->tick));
    PyObject *ts_obj = PyFloat_FromDouble(ts);
    PyObject *frame = PyBytes_FromStringAndSize((const char *)h + 16, caplen);
    PyObject *wire = PyLong_FromUnsignedLong(wire_len > caplen ? wire_len : caplen);
    if (ts_obj == NULL || frame == NULL || wire == NULL) {
        Py_XDECREF(ts_obj);
        Py_XDECREF(frame);
        Py_XDECREF(wire);
        return NULL;
    }
    PyObject *record = PyTuple_New(4);
    if (record == NULL) {
        Py_DECREF(ts_obj);
        Py_DECREF(frame);
        Py_DECREF(wire);
        return NULL;
    }
    PyTuple_SET_ITEM(record, 0, ts_obj);
    PyTuple_SET_ITEM(record, 1, Py_NewRef(self->linktype));
    PyTuple_SET_ITEM(record, 2, frame);
    PyTuple_SET_ITEM(record, 3, wire);
    self->pos = pos + 16 + caplen;
    self->count++;
    return record;
}

static PyMemberDef slicer_members[] = {
    {"pos", T_PYSSIZET, offsetof(SlicerObject, pos), READONLY,
     "Buffer offset of the next record not yet yielded."},
    {"count", T_PYSSIZET, offsetof(SlicerObject, count), READONLY, "Records yielded."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SlicerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edge_etc._fastpath.PcapSlicer",
    .tp_doc = PyDoc_STR("PcapSlicer(buf, pos, little_endian, tick, linktype, max_record): "
                        "iterator over the complete classic pcap records in buf from pos."),
    .tp_basicsize = sizeof(SlicerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = slicer_new,
    .tp_dealloc = (destructor)slicer_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)slicer_next,
    .tp_members = slicer_members,
};

/* ---- vectorize ---------------------------------------------------------------------- */

int fp_read_settings(PyObject *settings, fp_settings *out)
{
    PyObject *v;
    long values[6];
    static const char *names[] = {"header_bytes", "server_port", "mask_addresses",
                                  "mask_capture_fields", "context", "port_buckets"};
    for (int i = 0; i < 6; i++) {
        v = PyObject_GetAttrString(settings, names[i]);
        if (v == NULL)
            return -1;
        values[i] = PyLong_AsLong(v);  /* bool is an int subclass */
        Py_DECREF(v);
        if (values[i] == -1 && PyErr_Occurred())
            return -1;
    }
    if (values[0] < 40 || values[0] > 4096 || values[5] < 0 || values[5] > 4096) {
        PyErr_Format(PyExc_ValueError, "invalid preprocessing settings: header_bytes=%ld "
                     "(expected 40 to 4096), port_buckets=%ld (expected 0 to 4096)",
                     values[0], values[5]);
        return -1;
    }
    out->header_bytes = values[0];
    out->server_port = values[1] != 0;
    out->mask_addresses = values[2] != 0;
    out->mask_capture_fields = values[3] != 0;
    out->context = values[4] != 0;
    out->port_buckets = values[5];
    return 0;
}

/* The settings of `vectorize()`, read from the last settings object seen. Preprocessing is a
 * frozen dataclass, so one object's values never change. */
static struct {
    PyObject *object;
    fp_settings values;
} cached_settings;

static int read_cached_settings(PyObject *settings)
{
    if (settings == cached_settings.object)
        return 0;
    fp_settings values;
    if (fp_read_settings(settings, &values) < 0)
        return -1;
    Py_XSETREF(cached_settings.object, Py_NewRef(settings));
    cached_settings.values = values;
    return 0;
}

static inline void zero_range(unsigned char *v, Py_ssize_t start, Py_ssize_t end, Py_ssize_t size)
{
    if (end > size)
        end = size;
    if (end > start)
        memset(v + start, 0, end - start);
}

/* Read an int field. Fields are read as long long, not long, so that a 32-bit build, whose
 * long has 32 bits, accepts the same values as a 64-bit one. */
static int long_long_field(PyObject *obj, long long *out)
{
    *out = PyLong_AsLongLong(obj);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Read an offset field (l4_offset, l4_len). Any offset from FP_FAR_OFFSET on gives the same
 * bytes, so every larger value, also one beyond the long long range, becomes FP_FAR_OFFSET.
 * Returns 0, or -1 with a Python exception set (ValueError for a negative value). */
static int offset_field(PyObject *obj, Py_ssize_t *out)
{
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || (overflow == 0 && value < 0)) {
        PyErr_SetString(PyExc_ValueError, "Packet field out of range");
        return -1;
    }
    *out = overflow > 0 || value >= FP_FAR_OFFSET ? FP_FAR_OFFSET : (Py_ssize_t)value;
    return 0;
}

int fp_view_of_packet(PyObject *obj, fp_packet_view *view)
{
    if (!PyObject_TypeCheck(obj, &FpPacketType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Packet of edge_etc._fastpath");
        return -1;
    }
    PacketObject *pkt = (PacketObject *)obj;
    /* A field deleted with `del` is NULL. ts, src, dst and truncated are not read. */
    PyObject **slots = packet_slots(pkt);
    for (int i = 0; i < PACKET_FIELDS; i++) {
        if (slots[i] == NULL && &slots[i] != &pkt->ts && &slots[i] != &pkt->src &&
            &slots[i] != &pkt->dst && &slots[i] != &pkt->truncated) {
            PyErr_Format(PyExc_AttributeError, "Packet field %s was deleted",
                         packet_members[i].name);
            return -1;
        }
    }
    if (!PyBytes_Check(pkt->ip)) {
        PyErr_SetString(PyExc_TypeError, "Packet.ip must be bytes");
        return -1;
    }
    /* A payload length can exceed 2**31: an IPv4 total length of 0 takes the record's wire
     * length, up to 2**32 - 1. */
    long long payload_len, sport, dport, flags;
    if (offset_field(pkt->l4_offset, &view->l4) || offset_field(pkt->l4_len, &view->l4_len) ||
        long_long_field(pkt->proto, &view->proto) ||
        long_long_field(pkt->version, &view->version) ||
        long_long_field(pkt->payload_len, &payload_len) || long_long_field(pkt->sport, &sport) ||
        long_long_field(pkt->dport, &dport) || long_long_field(pkt->tcp_flags, &flags))
        return -1;
    if (payload_len < 0 || sport < 0 || sport > 65535 || dport < 0 || dport > 65535 ||
        flags < 0 || flags > 255) {
        PyErr_SetString(PyExc_ValueError, "Packet field out of range");
        return -1;
    }
    view->sport = (long)sport;
    view->dport = (long)dport;
    view->flags = (long)flags;
    view->payload_len = payload_len;
    view->ip = (const unsigned char *)PyBytes_AS_STRING(pkt->ip);
    view->n = PyBytes_GET_SIZE(pkt->ip);
    return 0;
}

int fp_packet_endpoints(PyObject *obj, double *ts, const unsigned char **src,
                        const unsigned char **dst, Py_ssize_t *addr_len)
{
    PacketObject *pkt = (PacketObject *)obj;  /* fp_view_of_packet checked the type */
    if (pkt->ts == NULL || pkt->src == NULL || pkt->dst == NULL || !PyBytes_Check(pkt->src) ||
        !PyBytes_Check(pkt->dst) || PyBytes_GET_SIZE(pkt->src) != PyBytes_GET_SIZE(pkt->dst) ||
        (PyBytes_GET_SIZE(pkt->src) != 4 && PyBytes_GET_SIZE(pkt->src) != 16)) {
        PyErr_SetString(PyExc_ValueError, "Packet addresses must be two bytes of 4 or 16 bytes");
        return -1;
    }
    *ts = PyFloat_AsDouble(pkt->ts);
    if (*ts == -1.0 && PyErr_Occurred())
        return -1;
    *src = (const unsigned char *)PyBytes_AS_STRING(pkt->src);
    *dst = (const unsigned char *)PyBytes_AS_STRING(pkt->dst);
    *addr_len = PyBytes_GET_SIZE(pkt->src);
    return 0;
}

Py_ssize_t fp_vector_length(const fp_settings *s, int port_block)
{
    if (!s->context)
        return s->header_bytes;
    return s->header_bytes + FP_CONTEXT_BYTES + (port_block ? s->port_buckets : 0);
}

/* edge_etc.preprocess.vectorize; see that function and the module docstring of
 * edge_etc/preprocess.py for the layout and the masking rules. */
int fp_vectorize_into(unsigned char *v, const fp_settings *s, const fp_packet_view *p,
                      int server_is_dst, double gap_s, int port_block)
{
    const Py_ssize_t l4 = p->l4, l4_len = p->l4_len;
    const long long proto = p->proto;
    const Py_ssize_t size = s->header_bytes;
    const long buckets = s->context && port_block ? s->port_buckets : 0;
    memset(v, 0, fp_vector_length(s, port_block));
    const unsigned char *ip = p->ip;
    const Py_ssize_t n = p->n;

    /* Copy the captured bytes; a UDP header is followed by 12 zero bytes. */
    if (proto == 17) {
        Py_ssize_t head = l4 + 8 < n ? l4 + 8 : n;
        memcpy(v, ip, head < size ? head : size);
        Py_ssize_t at = head + 12;  /* where the payload goes in the vector */
        Py_ssize_t from = l4 + 8, to = l4 + 8 + size - at;
        if (to > n)
            to = n;
        if (to > from && at < size) {
            Py_ssize_t count = to - from;
            if (at + count > size)
                count = size - at;
            memcpy(v + at, ip + from, count);
        }
    }
    else {
        memcpy(v, ip, n < size ? n : size);
    }

    /* Ports: the client's is always zeroed, the server's unless server_port. */
    if (l4 + 4 <= size) {
        Py_ssize_t client_at = server_is_dst ? l4 : l4 + 2;
        Py_ssize_t server_at = server_is_dst ? l4 + 2 : l4;
        v[client_at] = v[client_at + 1] = 0;
        if (!s->server_port)
            v[server_at] = v[server_at + 1] = 0;
    }
    if (s->mask_capture_fields) {
        if (proto == 6) {
            Py_ssize_t end = l4 + l4_len < size ? l4 + l4_len : size;
            zero_range(v, l4 + 4, l4 + 12, size);
            zero_range(v, l4 + 14, l4 + 20, size);
            zero_range(v, l4 + 20, end, size);
        }
        else {
            zero_range(v, l4 + 6, l4 + 8, size);
        }
        if (p->version == 4) {
            v[1] = 0;
            zero_range(v, 4, 12, size);
            v[9] = (unsigned char)proto;
            zero_range(v, 20, l4, size);
        }
        else {
            v[0] = 0x60;
            zero_range(v, 1, 4, size);
            v[7] = 0;
        }
    }
    if (s->mask_addresses) {
        if (p->version == 4)
            zero_range(v, 12, 20, size);
        else
            zero_range(v, 8, 40, size);
    }

    if (s->context) {
        unsigned char *c = v + size;
        long gap = 0;
        if (gap_s > 0 || isnan(gap_s)) {
            /* rint rounds half to even, as Python's round() does. Each step is rounded to
             * double where Python rounds it, log10's result too, because on 32-bit x86 the C
             * library may return it with the x87's precision. */
            double microseconds = fp_double(gap_s * 1e6);
            double g = rint(fp_double(20.0 * fp_double(log10(fp_double(1.0 + microseconds)))));
            if (!isfinite(g)) {
                /* A NaN gap, or one so large that gap_s * 1e6 overflows: Python's round()
                 * raises these two errors. */
                if (isnan(g))
                    PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
                else
                    PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
                return -1;
            }
            gap = g > 255 ? 255 : (long)g;
        }
        long long length = p->payload_len < 65535 ? p->payload_len : 65535;
        double size_byte = rint(16.0 * fp_double(log2(1.0 + (double)length)));
        long port = 0;
        if (s->server_port)
            port = server_is_dst ? p->dport : p->sport;
        c[0] = server_is_dst ? 0 : 255;
        c[1] = (unsigned char)gap;
        c[2] = (unsigned char)(size_byte > 255 ? 255 : (long)size_byte);
        c[3] = (unsigned char)(length >> 8);
        c[4] = (unsigned char)(length & 0xFF);
        c[5] = (unsigned char)(port >> 8);
        c[6] = (unsigned char)(port & 0xFF);
        c[7] = (unsigned char)p->flags;
        if (buckets)
            c[FP_CONTEXT_BYTES + (long)((((uint64_t)port * 2654435761u) & 0xFFFFFFFFu) % (uint64_t)buckets)] = 255;
    }
    return 0;
}

/* vectorize(pkt, server_is_dst, settings, gap_s, port_block) -> bytes
 *
 * edge_etc.preprocess.vectorize for a Packet of this module. */
static PyObject *fast_vectorize(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "vectorize() takes 5 arguments");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], &FpPacketType)) {
        PyErr_SetString(PyExc_TypeError, "vectorize() needs a Packet of edge_etc._fastpath");
        return NULL;
    }
    int server_is_dst = PyObject_IsTrue(args[1]);
    if (server_is_dst < 0 || read_cached_settings(args[2]) < 0)
        return NULL;
    double gap_s = PyFloat_AsDouble(args[3]);
    if (gap_s == -1.0 && PyErr_Occurred())
        return NULL;
    int port_block = PyObject_IsTrue(args[4]);
    if (port_block < 0)
        return NULL;
    fp_packet_view view;
    if (fp_view_of_packet(args[0], &view) < 0)
        return NULL;
    const fp_settings *s = &cached_settings.values;
    PyObject *out = PyBytes_FromStringAndSize(NULL, fp_vector_length(s, port_block));
    if (out == NULL)
        return NULL;
    if (fp_vectorize_into((unsigned char *)PyBytes_AS_STRING(out), s, &view, server_is_dst,
                          gap_s, port_block) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* ---- module ------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))fast_decode, METH_FASTCALL,
     "decode(ts, linktype, frame, wire_len) -> Packet, or None to leave the frame to the "
     "Python decoder."},
    {"vectorize", (PyCFunction)(void (*)(void))fast_vectorize, METH_FASTCALL,
     "vectorize(pkt, server_is_dst, settings, gap_s, port_block) -> bytes."},
    {"format_rounded", (PyCFunction)fp_format_rounded, METH_VARARGS,
     "format_rounded(x, digits) -> str: repr(round(x, digits)) as the engine's JSON lines "
     "write it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "edge_etc._fastpath",
    .m_doc = "Compiled fast path of edge-etc's packet reading, decoding and vectorizing.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&FpPacketType) < 0 || PyType_Ready(&SlicerType) < 0 || fp_engine_ready() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Packet", (PyObject *)&FpPacketType) < 0 ||
        PyModule_AddObjectRef(m, "PcapSlicer", (PyObject *)&SlicerType) < 0 ||
        PyModule_AddObjectRef(m, "Engine", (PyObject *)&FpEngineType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

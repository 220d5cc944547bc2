/* Declarations shared by the two source files of the edge_etc._fastpath extension:
 * _fastpath.c (decoder, pcap record slicer, vectorizer, module set-up) and _engine.c (the
 * compiled flow engine). Both files are compiled into one module. */

#ifndef EDGE_ETC_FASTPATH_H
#define EDGE_ETC_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <stdint.h>

#if PY_VERSION_HEX < 0x030A0000  /* Python 3.9 lacks these two helpers */
static inline PyObject *Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}

static inline int PyModule_AddObjectRef(PyObject *module, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(module, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* Round `x` to double precision, as storing it in a Python float does.
 *
 * Where FLT_EVAL_METHOD is not 0, a double expression may keep a wider precision until it
 * is stored. GCC on 32-bit x86 without SSE2 evaluates it with the x87's 64-bit significand
 * (FLT_EVAL_METHOD 2). There `sec + frac * tick` would be rounded once, but Python rounds
 * the product and then the sum. So each double result that Python would store goes through
 * this function, which stores it through a volatile variable. Where FLT_EVAL_METHOD is 0
 * (x86-64, ARM) the function returns `x` and compiles to nothing. */
static inline double fp_double(double x)
{
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    return x;
#else
    volatile double stored = x;
    return stored;
#endif
}

/* A TCP or UDP packet decoded by `fp_decode_frame`, pointing into the caller's frame. */
typedef struct {
    const unsigned char *ip;  /* first byte of the IP header */
    Py_ssize_t n;             /* captured bytes from `ip` on */
    int version;              /* 4 or 6 */
    unsigned proto;           /* 6 or 17 */
    Py_ssize_t addr_at;       /* offset of the source address in `ip` */
    Py_ssize_t addr_len;      /* 4 or 16 */
    unsigned sport, dport, flags;
    Py_ssize_t l4;            /* transport header offset in `ip` */
    long long l4_len;         /* transport header length */
    long long total;          /* IP length from the headers */
} fp_decoded;

/* The fields of a packet that the vectorizer reads. */
typedef struct {
    const unsigned char *ip;
    Py_ssize_t n;
    Py_ssize_t l4, l4_len;    /* clamped to FP_FAR_OFFSET */
    long long proto, version; /* not long: a 32-bit build accepts what a 64-bit one does */
    long long payload_len;
    long sport, dport, flags;
} fp_packet_view;

/* The preprocessing settings that the vectorizer reads (see edge_etc/preprocess.py). */
typedef struct {
    Py_ssize_t header_bytes;
    int server_port, mask_addresses, mask_capture_fields, context;
    long port_buckets;
} fp_settings;

/* An offset past both the packet and the vector gives the same bytes whatever its value, so
 * offsets are clamped to this value, which keeps sums of two of them from overflowing. */
#define FP_FAR_OFFSET (PY_SSIZE_T_MAX / 4)

#define FP_CONTEXT_BYTES 8

/* Decode a frame of a common link layer into `out`. Returns 1 when decoded, 0 when the
 * frame needs the Python decoder (anything unusual, malformed or fragmented). A negative
 * `wire_len` means that the wire length is unknown. */
int fp_decode_frame(long linktype, const unsigned char *frame, Py_ssize_t frame_len,
                    long long wire_len, fp_decoded *out);

/* Read the link type and wire length of a record given to Python as (ts, linktype, frame,
 * wire_len); a wire length of None becomes -1. Returns 1, or 0 when the record is for the
 * Python decoder: a frame that is not bytes, or a link type or wire length that is not an
 * int in range. */
int fp_record_args(PyObject *const *args, long *linktype, long long *wire_len);

/* Fill `view` from a decoded packet. */
void fp_view_of_decoded(const fp_decoded *d, fp_packet_view *view);

/* Length of a vector: header bytes, then the context bytes and the port block, if any. */
Py_ssize_t fp_vector_length(const fp_settings *s, int port_block);

/* Write the vector of one packet to `v` (fp_vector_length bytes). Returns 0, or -1 with a
 * Python exception set for a gap that Python's round() rejects (NaN or infinite). */
int fp_vectorize_into(unsigned char *v, const fp_settings *s, const fp_packet_view *p,
                      int server_is_dst, double gap_s, int port_block);

/* Read the vectorizer's settings from a Preprocessing object. Returns 0, or -1 with a Python
 * exception set. */
int fp_read_settings(PyObject *settings, fp_settings *out);

/* The Packet type of this module, and a view of one of its objects for the vectorizer.
 * fp_view_of_packet returns 0, or -1 with a Python exception set. */
extern PyTypeObject FpPacketType;
int fp_view_of_packet(PyObject *packet, fp_packet_view *view);

/* Read the time stamp and addresses of a Packet of this module. Returns 0, or -1 with a
 * Python exception set when they are not a float and two bytes of 4 or 16 bytes each. */
int fp_packet_endpoints(PyObject *packet, double *ts, const unsigned char **src,
                        const unsigned char **dst, Py_ssize_t *addr_len);

/* The flow engine type, defined in _engine.c, and its set-up for the module (0, or -1 with
 * a Python exception set). */
extern PyTypeObject FpEngineType;
int fp_engine_ready(void);

/* format_rounded(x, digits), a module function for tests (see _engine.c). */
PyObject *fp_format_rounded(PyObject *module, PyObject *args);

#endif

/* Ingest's compiled loops: whole Arrow arrays in, Arrow buffers out.
 *
 * join_lines makes a batch's one array of lines from its frames' records;
 * skeletons writes the stored lines of a normalised batch (storage/lines.py);
 * any_contains asks whether a word is in any of a batch's lines. The
 * rest is the compiled half of two parsers.
 *
 * DuckDB's JSON and regex functions are fast per call, but flattening a JSON
 * object and extracting eleven regex groups per access-log line take dozens of
 * list and lambda operations per row in SQL. These two scanners do that work in
 * one pass over the batch's value buffer, for the lines they fully understand.
 * Every other line is marked DEFER and the SQL parser handles it as before, so
 * the SQL stays the reference for anything unusual (duplicate keys, lone
 * surrogates, invalid JSON, access lines of another shape); the scanners only
 * ever take a subset of what the SQL accepts, and give the same answer on it.
 *
 * Row status: 0 not asked, 1 parsed here, 2 deferred to SQL.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE     /* memmem */
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { NOT_ASKED = 0, PARSED = 1, DEFER = 2 };

/* Nesting deeper than this anywhere in a line (inside arrays too): deferred, so no
 * line can recurse without bound. */
#define MAX_NESTING 256
/* Above this many attributes the duplicate check would be quadratic: deferred. */
#define MAX_PAIRWISE 256

/* -- character classes, one table lookup per byte ----------------------------------- */

enum {
    C_SPACE = 1,       /* RE2's \s: \t \n \f \r and space */
    C_QUOTE = 2,
    C_BACKSLASH = 4,
    C_RBRACKET = 8,
    C_CONTROL = 16,    /* below 0x20: not allowed raw in a JSON string */
    C_JSON_WS = 32,    /* JSON's whitespace: \t \n \r and space */
    C_COMMA = 64,
    C_RESERVED = 128,  /* control bytes but \t \n \r (and NUL): what stands for values in a stored line */
};
static unsigned char cls[256];

static void init_classes(void) {
    for (int c = 0; c < 0x20; c++) cls[c] |= C_CONTROL;
    for (int c = 1; c < 0x20; c++)
        if (c != '\t' && c != '\n' && c != '\r') cls[c] |= C_RESERVED;
    cls['\t'] |= C_SPACE | C_JSON_WS;
    cls['\n'] |= C_SPACE | C_JSON_WS;
    cls['\r'] |= C_SPACE | C_JSON_WS;
    cls[' '] |= C_SPACE | C_JSON_WS;
    cls['\f'] |= C_SPACE;
    cls['"'] |= C_QUOTE;
    cls['\\'] |= C_BACKSLASH;
    cls[']'] |= C_RBRACKET;
    cls[','] |= C_COMMA;
}

#define IS(c, mask) (cls[(unsigned char)(c)] & (mask))

/* -- growable byte buffer ------------------------------------------------------ */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    int fixed;          /* p is memory this Buf does not own (a bytes object's): never grown */
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    if (b->fixed)
        return -1;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, (size_t)cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* -- spare memory ---------------------------------------------------------------
 *
 * A batch's output buffers are tens of megabytes: malloc maps such blocks fresh and free unmaps
 * them, so every flush paid a page fault per 4 KiB of its output again (a quarter of the JSON
 * pass, measured with perf). The memory of the big blocks Arrow lets go of is kept here, up to
 * SPARE_BYTES, and handed to the next pass's buffers, already mapped. */

#define SPARES 16
#define SPARE_MIN ((Py_ssize_t)1 << 20)
#define SPARE_BYTES ((Py_ssize_t)256 << 20)

static struct { char *p; Py_ssize_t cap; } spares[SPARES];
static Py_ssize_t spare_count, spare_total;
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;

/* Memory of at least want bytes: the smallest spare block that holds it, else malloc's; *cap its size. */
static char *spare_take(Py_ssize_t want, Py_ssize_t *cap) {
    pthread_mutex_lock(&spare_lock);
    Py_ssize_t best = -1;
    for (Py_ssize_t i = 0; i < spare_count; i++)
        if (spares[i].cap >= want && (best < 0 || spares[i].cap < spares[best].cap))
            best = i;
    char *p = NULL;
    if (best >= 0) {
        p = spares[best].p;
        *cap = spares[best].cap;
        spare_total -= *cap;
        spares[best] = spares[--spare_count];
    }
    pthread_mutex_unlock(&spare_lock);
    if (!p) {
        p = malloc((size_t)want);
        *cap = want;
    }
    return p;
}

/* Keep p (cap bytes) for a later pass if it is big and there is room, else free it. */
static void spare_give(char *p, Py_ssize_t cap) {
    if (!p)
        return;
    if (cap >= SPARE_MIN) {
        pthread_mutex_lock(&spare_lock);
        int kept = spare_count < SPARES && spare_total + cap <= SPARE_BYTES;
        if (kept) {
            spares[spare_count].p = p;
            spares[spare_count++].cap = cap;
            spare_total += cap;
        }
        pthread_mutex_unlock(&spare_lock);
        if (kept)
            return;
    }
    free(p);
}

/* Room for want bytes in an empty Buf, from spare memory when there is some. */
static int buf_presize(Buf *b, Py_ssize_t want) {
    if (b->p || b->fixed || want < SPARE_MIN)
        return 0;
    Py_ssize_t cap;
    char *p = spare_take(want, &cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (n == 0)
        return 0;
    if (b->len + n > b->cap && buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static inline int buf_byte(Buf *b, char c) {
    if (b->len == b->cap && buf_reserve(b, 1) < 0)
        return -1;
    b->p[b->len++] = c;
    return 0;
}

static inline int buf_i64(Buf *b, int64_t v) { return buf_put(b, (const char *)&v, 8); }
static inline int buf_i32(Buf *b, int32_t v) { return buf_put(b, (const char *)&v, 4); }

/* A read-only buffer that owns a Buf's memory: handing a pass's output to Arrow (pa.py_buffer) as a
 * Block costs nothing, where a bytes object cost a copy of every output byte (and the page faults of
 * the copy's fresh memory): a tenth of the JSON pre-pass. */
typedef struct {
    PyObject_HEAD
    char *p;
    Py_ssize_t len, cap;
} Block;

static int block_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    Block *b = (Block *)self;
    return PyBuffer_FillInfo(view, self, b->p ? b->p : (char *)"", b->len, 1, flags);
}

static void block_dealloc(PyObject *self) {
    spare_give(((Block *)self)->p, ((Block *)self)->cap);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t block_length(PyObject *self) { return ((Block *)self)->len; }

static PyBufferProcs block_buffer = {.bf_getbuffer = block_getbuffer};
static PySequenceMethods block_sequence = {.sq_length = block_length};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_native.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = block_dealloc,
    .tp_as_buffer = &block_buffer,
    .tp_as_sequence = &block_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Bytes a compiled pass wrote, read-only, through the buffer protocol.",
};

/* The Buf's bytes as a Block that takes its memory over (the Buf is left empty); a Buf over memory
 * it does not own is copied into bytes. */
static PyObject *buf_bytes(Buf *b) {
    if (b->fixed || b->p == NULL)
        return PyBytes_FromStringAndSize(b->p ? b->p : "", b->len);
    Block *out = PyObject_New(Block, &BlockType);
    if (!out)
        return NULL;
    /* (a small block is shrunk, or the slack of doubling would stay allocated; a big one is mapped
     * memory, whose untouched slack costs nothing, and is kept whole for spare_give) */
    char *p = b->len > 0 && b->len < b->cap && b->cap < SPARE_MIN ? realloc(b->p, (size_t)b->len) : NULL;
    out->p = p ? p : b->p;
    out->len = b->len;
    out->cap = p ? b->len : b->cap;
    b->p = NULL;
    b->len = b->cap = 0;
    return (PyObject *)out;
}

/* -- input: an Arrow string array ------------------------------------------------ */

typedef struct {
    Py_buffer offsets, data, selected;
    Py_ssize_t first, n;
} Lines;

static void lines_close(Lines *in) {
    /* Releasing a view never taken (obj NULL, from the memset) does nothing. */
    PyBuffer_Release(&in->offsets);
    PyBuffer_Release(&in->data);
    PyBuffer_Release(&in->selected);
}

static int lines_open(Lines *in, PyObject *offsets, PyObject *data, PyObject *selected, Py_ssize_t first,
                      Py_ssize_t n) {
    memset(in, 0, sizeof *in);
    in->first = first;
    in->n = n;
    if (PyObject_GetBuffer(offsets, &in->offsets, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(data, &in->data, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(selected, &in->selected, PyBUF_SIMPLE) < 0) {
        lines_close(in);
        return -1;
    }
    if (first < 0 || n < 0 || (first + n + 1) * 4 > in->offsets.len || n > in->selected.len) {
        PyErr_SetString(PyExc_ValueError, "offsets or selection shorter than the array");
        lines_close(in);
        return -1;
    }
    return 0;
}

static inline int line_at(Lines *in, Py_ssize_t i, const char **s, const char **end) {
    const int32_t *off = (const int32_t *)in->offsets.buf;
    int32_t a = off[in->first + i], b = off[in->first + i + 1];
    if (a < 0 || b < a || b > in->data.len)
        return -1;
    *s = (const char *)in->data.buf + a;
    *end = (const char *)in->data.buf + b;
    return 0;
}

/* -- JSON ---------------------------------------------------------------------- */

struct WellKnown;

typedef struct {
    const char *p, *end;
    Buf *keys, *vals, *key;     /* key: the current dotted key being built */
    Buf *key_off, *val_off, *valid;
    int64_t entries;
    int max_depth;
    int oom;
    /* Where the line's values under well-known keys are (a Span each), for its shape. */
    Buf *spans;
    const char *line;
    const struct WellKnown *wk;
} Json;

/* A value of a well-known key, written plainly (a string with nothing escaped, or a number). */
typedef struct {
    int64_t entry;          /* its entry, counted from the line's first */
    int64_t start, end;     /* its text in the line (inside the quotes) */
    int32_t group;
} Span;

static int group_of(const struct WellKnown *w, const char *k, Py_ssize_t len);

/* Note where entry's plain value [a, b) is when its key is well-known (a group after the time's and
 * the level's, whose text the columns do not keep). */
static int note_span(Json *j, int64_t entry, const char *a, const char *b) {
    int group = group_of(j->wk, j->key->p, j->key->len);
    if (group < 2 || b <= a) return 0;
    Span sp = {entry, a - j->line, b - j->line, group};
    if (buf_put(j->spans, (const char *)&sp, (Py_ssize_t)sizeof sp) < 0) { j->oom = 1; return -1; }
    return 0;
}

static inline void skip_ws(Json *j) {
    while (j->p < j->end && IS(*j->p, C_JSON_WS))
        j->p++;
}

static inline int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A string at j->p (on its opening quote), decoded into out (NULL: only checked).
 * -1: not one this scanner takes. */
static int json_string(Json *j, Buf *out) {
    const char *p = j->p + 1;
    for (;;) {
        const char *run = p;
        while (p < j->end && !IS(*p, C_QUOTE | C_BACKSLASH | C_CONTROL))
            p++;
        if (out && p > run && buf_put(out, run, p - run) < 0) { j->oom = 1; return -1; }
        if (p >= j->end || IS(*p, C_CONTROL))
            return -1;
        if (*p == '"') {
            j->p = p + 1;
            return 0;
        }
        /* a backslash escape */
        if (p + 1 >= j->end)
            return -1;
        char c = p[1], d;
        p += 2;
        switch (c) {
        case '"': d = '"'; break;
        case '\\': d = '\\'; break;
        case '/': d = '/'; break;
        case 'b': d = '\b'; break;
        case 'f': d = '\f'; break;
        case 'n': d = '\n'; break;
        case 'r': d = '\r'; break;
        case 't': d = '\t'; break;
        case 'u': {
            unsigned u, lo;
            if (j->end - p < 4 || hex4(p, &u) < 0)
                return -1;
            p += 4;
            if (u == 0 || (u >= 0xDC00 && u <= 0xDFFF))
                return -1;           /* NUL or a lone low surrogate: left to the SQL parser */
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (j->end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) < 0 || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return -1;
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (out) {
                char utf8[4];
                int len;
                if (u < 0x80) { utf8[0] = (char)u; len = 1; }
                else if (u < 0x800) { utf8[0] = (char)(0xC0 | (u >> 6)); utf8[1] = (char)(0x80 | (u & 0x3F)); len = 2; }
                else if (u < 0x10000) {
                    utf8[0] = (char)(0xE0 | (u >> 12)); utf8[1] = (char)(0x80 | ((u >> 6) & 0x3F));
                    utf8[2] = (char)(0x80 | (u & 0x3F)); len = 3;
                } else {
                    utf8[0] = (char)(0xF0 | (u >> 18)); utf8[1] = (char)(0x80 | ((u >> 12) & 0x3F));
                    utf8[2] = (char)(0x80 | ((u >> 6) & 0x3F)); utf8[3] = (char)(0x80 | (u & 0x3F)); len = 4;
                }
                if (buf_put(out, utf8, len) < 0) { j->oom = 1; return -1; }
            }
            continue;
        }
        default:
            return -1;
        }
        if (out && buf_byte(out, d) < 0) { j->oom = 1; return -1; }
    }
}

/* A number at j->p, in RFC 8259's grammar. */
static int json_number(Json *j) {
    const char *p = j->p;
    if (p < j->end && *p == '-') p++;
    if (p >= j->end) return -1;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') { while (p < j->end && *p >= '0' && *p <= '9') p++; }
    else return -1;
    if (p < j->end && *p == '.') {
        p++;
        if (p >= j->end || *p < '0' || *p > '9') return -1;
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < j->end && (*p == '+' || *p == '-')) p++;
        if (p >= j->end || *p < '0' || *p > '9') return -1;
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    return 0;
}

static int json_literal(Json *j, const char *word, Py_ssize_t n) {
    if (j->end - j->p < n || memcmp(j->p, word, (size_t)n) != 0) return -1;
    j->p += n;
    return 0;
}

/* Any value, only checked: for arrays and objects that stay JSON text. */
static int json_skip(Json *j, int nesting) {
    if (j->p >= j->end) return -1;
    char c = *j->p;
    if (c == '"') return json_string(j, NULL);
    if (c == 't') return json_literal(j, "true", 4);
    if (c == 'f') return json_literal(j, "false", 5);
    if (c == 'n') return json_literal(j, "null", 4);
    if (c != '{' && c != '[') return json_number(j);
    if (nesting >= MAX_NESTING) return -1;
    char close = c == '{' ? '}' : ']';
    j->p++;
    skip_ws(j);
    if (j->p < j->end && *j->p == close) { j->p++; return 0; }
    for (;;) {
        if (c == '{') {
            if (j->p >= j->end || *j->p != '"' || json_string(j, NULL) < 0) return -1;
            skip_ws(j);
            if (j->p >= j->end || *j->p != ':') return -1;
            j->p++;
            skip_ws(j);
        }
        if (json_skip(j, nesting + 1) < 0) return -1;
        skip_ws(j);
        if (j->p >= j->end) return -1;
        if (*j->p == ',') { j->p++; skip_ws(j); continue; }
        if (*j->p == close) { j->p++; return 0; }
        return -1;
    }
}

/* JSON text from a to b without the whitespace between tokens, as the SQL parser writes it. */
static int put_compact(Json *j, const char *a, const char *b) {
    Buf *out = j->vals;
    if (buf_reserve(out, b - a) < 0) { j->oom = 1; return -1; }
    int in_string = 0;
    for (const char *p = a; p < b; p++) {
        char c = *p;
        if (in_string) {
            if (c == '\\') { out->p[out->len++] = c; c = *++p; }
            else if (c == '"') in_string = 0;
        } else if (IS(c, C_JSON_WS)) {
            continue;
        } else if (c == '"') {
            in_string = 1;
        }
        out->p[out->len++] = c;
    }
    return 0;
}

static int end_entry(Json *j, int valid) {
    if (buf_put(j->keys, j->key->p, j->key->len) < 0 || buf_i64(j->key_off, j->keys->len) < 0 ||
        buf_i64(j->val_off, j->vals->len) < 0 || buf_byte(j->valid, (char)valid) < 0) {
        j->oom = 1;
        return -1;
    }
    j->entries++;
    return 0;
}

/* The members of an object at j->p (on its '{'), each leaf an entry under key prefix j->key. */
static int json_object(Json *j, int depth) {
    Py_ssize_t prefix = j->key->len;
    j->p++;
    skip_ws(j);
    if (j->p < j->end && *j->p == '}') { j->p++; return 0; }
    for (;;) {
        if (j->p >= j->end || *j->p != '"') return -1;
        j->key->len = prefix;
        if (json_string(j, j->key) < 0) return -1;
        skip_ws(j);
        if (j->p >= j->end || *j->p != ':') return -1;
        j->p++;
        skip_ws(j);
        if (j->p >= j->end) return -1;
        const char *v = j->p;
        char c = *v;
        if (c == '"') {
            Py_ssize_t before = j->vals->len;
            if (json_string(j, j->vals) < 0) return -1;
            /* Nothing escaped: decoding kept every byte. */
            if (j->vals->len - before == (j->p - v) - 2 && note_span(j, j->entries, v + 1, j->p - 1) < 0)
                return -1;
            if (end_entry(j, 1) < 0) return -1;
        } else if (c == '{') {
            const char *after = v + 1;
            while (after < j->end && IS(*after, C_JSON_WS)) after++;
            int empty = after < j->end && *after == '}';
            if (!empty && depth < j->max_depth) {
                Py_ssize_t here = j->key->len;
                if (buf_byte(j->key, '.') < 0) { j->oom = 1; return -1; }
                if (json_object(j, depth + 1) < 0) return -1;
                j->key->len = here;
            } else {
                if (json_skip(j, depth) < 0 || put_compact(j, v, j->p) < 0 || end_entry(j, 1) < 0) return -1;
            }
        } else if (c == '[') {
            if (json_skip(j, depth) < 0 || put_compact(j, v, j->p) < 0 || end_entry(j, 1) < 0) return -1;
        } else if (c == 'n') {
            if (json_literal(j, "null", 4) < 0 || end_entry(j, 0) < 0) return -1;
        } else {
            if (c == 't') { if (json_literal(j, "true", 4) < 0) return -1; }
            else if (c == 'f') { if (json_literal(j, "false", 5) < 0) return -1; }
            else if (json_number(j) < 0) return -1;
            if (buf_put(j->vals, v, j->p - v) < 0) { j->oom = 1; return -1; }
            if (c != 't' && c != 'f' && note_span(j, j->entries, v, j->p) < 0)
                return -1;
            if (end_entry(j, 1) < 0) return -1;
        }
        skip_ws(j);
        if (j->p >= j->end) return -1;
        if (*j->p == ',') { j->p++; skip_ws(j); continue; }
        if (*j->p == '}') { j->p++; return 0; }
        return -1;
    }
}

/* Whether entries [first, first + n) repeat a key. */
static int repeats_a_key(Buf *keys, Buf *key_off, int64_t first, int64_t n) {
    const int64_t *off = (const int64_t *)key_off->p;
    for (int64_t a = first; a < first + n; a++) {
        int64_t la = off[a + 1] - off[a];
        for (int64_t b = a + 1; b < first + n; b++) {
            if (off[b + 1] - off[b] == la && memcmp(keys->p + off[a], keys->p + off[b], (size_t)la) == 0)
                return 1;
        }
    }
    return 0;
}

static void free_bufs(Buf *bufs, int n) {
    for (int i = 0; i < n; i++) free(bufs[i].p);
}

/* The well-known keys: candidate c is key[c] (len[c] bytes) of group group[c], rank[c] in its
 * group's precedence; by_first[b] lists the candidates starting with byte b. */
#define MAX_CANDIDATES 64
#define MAX_GROUPS 16
typedef struct WellKnown {
    int n, groups;
    const char *key[MAX_CANDIDATES];
    Py_ssize_t len[MAX_CANDIDATES];
    int group[MAX_CANDIDATES], rank[MAX_CANDIDATES];
    signed char by_first[256][MAX_CANDIDATES + 1];    /* -1 ends each list */
} WellKnown;

static int well_known_open(WellKnown *w, PyObject *groups) {
    memset(w, 0, sizeof *w);
    for (int c = 0; c < 256; c++) w->by_first[c][0] = -1;
    w->groups = (int)PyList_GET_SIZE(groups);
    if (w->groups > MAX_GROUPS) { PyErr_SetString(PyExc_ValueError, "too many key groups"); return -1; }
    for (int g = 0; g < w->groups; g++) {
        PyObject *keys = PyList_GET_ITEM(groups, g);
        if (!PyList_Check(keys)) { PyErr_SetString(PyExc_TypeError, "a key group is a list of bytes"); return -1; }
        for (Py_ssize_t r = 0; r < PyList_GET_SIZE(keys); r++) {
            PyObject *k = PyList_GET_ITEM(keys, r);
            if (!PyBytes_Check(k) || PyBytes_GET_SIZE(k) == 0 || w->n >= MAX_CANDIDATES) {
                PyErr_SetString(PyExc_ValueError, "keys are non-empty bytes, at most 64 in all");
                return -1;
            }
            int c = w->n++;
            w->key[c] = PyBytes_AS_STRING(k);     /* the list is held by the caller for the call */
            w->len[c] = PyBytes_GET_SIZE(k);
            w->group[c] = g;
            w->rank[c] = (int)r;
            signed char *list = w->by_first[(unsigned char)w->key[c][0]];
            int at = 0;
            while (list[at] >= 0) at++;
            list[at] = (signed char)c;
            list[at + 1] = -1;
        }
    }
    return 0;
}

/* The group key k (len bytes) is one of, or -1. */
static int group_of(const struct WellKnown *w, const char *k, Py_ssize_t len) {
    if (len == 0) return -1;
    for (const signed char *c = w->by_first[(unsigned char)k[0]]; *c >= 0; c++) {
        if (w->len[*c] == len && memcmp(w->key[*c], k, (size_t)len) == 0)
            return w->group[*c];
    }
    return -1;
}

/* Per group, the 1-based position among the line's entries [first, first + n) of the first of
 * its keys (in precedence order) that the line has; 0 when it has none. Keys are unique here. */
static int find_well_known(const WellKnown *w, Buf *keys, Buf *key_off, int64_t first, int64_t n, Buf *out) {
    int32_t pos[MAX_GROUPS];
    int best[MAX_GROUPS];
    for (int g = 0; g < w->groups; g++) { pos[g] = 0; best[g] = MAX_CANDIDATES; }
    const int64_t *off = (const int64_t *)key_off->p;
    for (int64_t e = first; e < first + n; e++) {
        Py_ssize_t len = off[e + 1] - off[e];
        if (len == 0) continue;
        const char *k = keys->p + off[e];
        for (const signed char *c = w->by_first[(unsigned char)k[0]]; *c >= 0; c++) {
            if (w->len[*c] == len && memcmp(w->key[*c], k, (size_t)len) == 0 && w->rank[*c] < best[w->group[*c]]) {
                best[w->group[*c]] = w->rank[*c];
                pos[w->group[*c]] = (int32_t)(e - first + 1);
            }
        }
    }
    return buf_put(out, (const char *)pos, (Py_ssize_t)sizeof(int32_t) * w->groups);
}

PyDoc_STRVAR(json_entries_doc,
"json_entries(offsets, data, selected, first, n, max_depth, groups)\n--\n\n"
"Flatten the JSON object on each selected line of an Arrow string array into\n"
"(key, value) entries: nested objects become dotted keys up to max_depth levels,\n"
"arrays and deeper objects stay compact JSON text, strings are decoded, numbers\n"
"and true/false are their text, null is a null value.\n\n"
"Returns (status, list_offsets, key_offsets, keys, value_offsets, values, valid,\n"
"positions): a status byte per line (0 not selected, 1 flattened, 2 left to the\n"
"SQL parser), int32 entry offsets per line, int64 offsets and bytes of the keys\n"
"and values, a validity byte per entry (0: JSON null), and per line and group of\n"
"well-known keys (groups: lists of bytes, in precedence order) the int32 1-based\n"
"position of the entry holding the first of them the line has (0: none); then\n"
"int64 offsets and bytes of each line's shape: the line with the value of each\n"
"group's key from the third group on (the one `positions` names), when written\n"
"plainly (a string with nothing escaped, or a number), as one byte: the group's\n"
"number (empty for lines not flattened); and per line the int64 instant (µs since\n"
"the epoch) of the first group's value when it is a plain RFC 3339 time with a zone\n"
"(INT64_MIN otherwise).");

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400, yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

/* Whether y-m-d (m 1-12) is a date the proleptic Gregorian calendar has, from year 1 on. */
static int real_date(int y, int m, int d) {
    static const int month_days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || m < 1 || m > 12 || d < 1 || d > month_days[m - 1]) return 0;
    return m != 2 || d != 29 || (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0));
}

static inline int digits(const char *s, int n, int *out) {
    int v = 0;
    for (int k = 0; k < n; k++) {
        if (s[k] < '0' || s[k] > '9') return -1;
        v = v * 10 + (s[k] - '0');
    }
    *out = v;
    return 0;
}

/* The instant (µs since the epoch) of s when it is written the one plain RFC 3339 way,
 * "YYYY-MM-DD(T| )HH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)", with a real date and time; INT64_MIN for
 * anything else, which the SQL steps read as they always did. Digits of the fraction past the
 * sixth are dropped, as DuckDB's cast drops them. */
static int64_t rfc3339_us(const char *s, Py_ssize_t len) {
    int y, mo, d, h, mi, sec;
    if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' ||
        s[16] != ':' || digits(s, 4, &y) < 0 || digits(s + 5, 2, &mo) < 0 || digits(s + 8, 2, &d) < 0 ||
        digits(s + 11, 2, &h) < 0 || digits(s + 14, 2, &mi) < 0 || digits(s + 17, 2, &sec) < 0)
        return INT64_MIN;
    if (!real_date(y, mo, d) || h > 23 || mi > 59 || sec > 59)
        return INT64_MIN;
    Py_ssize_t at = 19;
    int64_t micros = 0;
    if (s[at] == '.') {
        int n = 0;
        for (at++; at < len && s[at] >= '0' && s[at] <= '9'; at++, n++) {
            if (n < 6) micros = micros * 10 + (s[at] - '0');
        }
        if (n == 0 || n > 9) return INT64_MIN;
        for (; n < 6; n++) micros *= 10;
    }
    int64_t offset_s = 0;
    if (at == len - 1 && s[at] == 'Z') {
        /* UTC */
    } else if (at == len - 6 && (s[at] == '+' || s[at] == '-') && s[at + 3] == ':') {
        int oh, om;
        if (digits(s + at + 1, 2, &oh) < 0 || digits(s + at + 4, 2, &om) < 0 || oh > 23 || om > 59)
            return INT64_MIN;
        offset_s = (s[at] == '-' ? -1 : 1) * (int64_t)(oh * 3600 + om * 60);
    } else {
        return INT64_MIN;
    }
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset_s;
    return secs * 1000000 + micros;
}

static PyObject *json_entries(PyObject *self, PyObject *args) {
    PyObject *offsets, *data, *selected, *groups;
    Py_ssize_t first, n;
    int max_depth;
    if (!PyArg_ParseTuple(args, "OOOnniO!", &offsets, &data, &selected, &first, &n, &max_depth, &PyList_Type,
                          &groups))
        return NULL;
    WellKnown *wk = PyMem_Malloc(sizeof(WellKnown));
    if (!wk)
        return PyErr_NoMemory();
    if (well_known_open(wk, groups) < 0) {
        PyMem_Free(wk);
        return NULL;
    }
    /* Flattening recurses once per level: never deeper than any line may nest. */
    max_depth = max_depth < 1 ? 1 : max_depth > MAX_NESTING ? MAX_NESTING : max_depth;
    Lines in;
    if (lines_open(&in, offsets, data, selected, first, n) < 0) {
        PyMem_Free(wk);
        return NULL;
    }
    /* status, list_off, key_off, keys, val_off, vals, valid, key, positions, shape_off, shape, spans, instants */
    Buf b[13] = {{0}};
    Buf *instants = &b[12];
    Buf *positions = &b[8], *shape_off = &b[9], *shape = &b[10];
    Buf *status = &b[0], *list_off = &b[1];
    Json j = {.keys = &b[3], .vals = &b[5], .key = &b[7], .key_off = &b[2], .val_off = &b[4], .valid = &b[6],
              .max_depth = max_depth, .spans = &b[11], .wk = wk};
    const char *sel = (const char *)in.selected.buf;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    /* The big outputs sized from the input at once (from spare memory): keys and values hold at
     * most about the lines' bytes (but for dotted keys), the shapes at most those bytes. */
    const int32_t *line_off = (const int32_t *)in.offsets.buf;
    Py_ssize_t bytes = n ? (Py_ssize_t)line_off[first + n] - line_off[first] : 0;
    if (buf_presize(j.vals, bytes) < 0 || buf_presize(shape, bytes) < 0 || buf_presize(j.keys, bytes / 2) < 0 ||
        buf_presize(j.key_off, bytes / 2) < 0 || buf_presize(j.val_off, bytes / 2) < 0)
        j.oom = 1;
    if (buf_reserve(status, n) < 0 || buf_reserve(instants, 8 * n) < 0 || buf_i32(list_off, 0) < 0 ||
        buf_i64(j.key_off, 0) < 0 || buf_i64(j.val_off, 0) < 0 || buf_i64(shape_off, 0) < 0)
        j.oom = 1;
    for (Py_ssize_t i = 0; i < n && !j.oom; i++) {
        char st = NOT_ASKED;
        if (sel[i]) {
            const char *s, *end;
            /* Where this line's entries start: a deferred line leaves none behind. */
            int64_t entries = j.entries;
            Py_ssize_t keys = j.keys->len, vals = j.vals->len, koff = j.key_off->len, voff = j.val_off->len,
                       valid = j.valid->len;
            st = DEFER;
            j.spans->len = 0;
            if (line_at(&in, i, &s, &end) == 0 && s < end && *s == '{') {
                j.p = s;
                j.end = end;
                j.line = s;
                j.key->len = 0;
                if (json_object(&j, 1) == 0) {
                    skip_ws(&j);
                    if (j.p == end && j.entries - entries <= MAX_PAIRWISE &&
                        !repeats_a_key(j.keys, j.key_off, entries, j.entries - entries))
                        st = PARSED;
                }
            }
            if (st == DEFER) {
                j.entries = entries;
                j.keys->len = keys;
                j.vals->len = vals;
                j.key_off->len = koff;
                j.val_off->len = voff;
                j.valid->len = valid;
            }
        }
        status->p[status->len++] = st;
        if (j.entries > INT32_MAX || buf_i32(list_off, (int32_t)j.entries) < 0) {
            failed = 1;
            break;
        }
        int64_t row_first = ((const int32_t *)list_off->p)[i];
        if (find_well_known(wk, j.keys, j.key_off, row_first, st == PARSED ? j.entries - row_first : 0,
                            positions) < 0)
            j.oom = 1;
        int64_t instant = INT64_MIN;
        if (st == PARSED && !j.oom && wk->groups > 0) {
            /* The first group's value (the time), read when it is a plain RFC 3339 instant. */
            int32_t at = ((const int32_t *)(positions->p + positions->len))[-wk->groups];
            if (at > 0 && j.valid->p[row_first + at - 1]) {
                const int64_t *voff = (const int64_t *)j.val_off->p;
                instant = rfc3339_us(j.vals->p + voff[row_first + at - 1],
                                     voff[row_first + at] - voff[row_first + at - 1]);
            }
        }
        if (!j.oom && buf_i64(instants, instant) < 0)
            j.oom = 1;
        if (st == PARSED && !j.oom) {
            /* The shape: each group's chosen value written as the group's number (a byte JSON never
             * holds unescaped), the rest of the line as it is. */
            const int32_t *pos = (const int32_t *)(positions->p + positions->len) - wk->groups;
            const Span *sp = (const Span *)j.spans->p;
            Py_ssize_t n_spans = j.spans->len / (Py_ssize_t)sizeof(Span);
            int64_t copied = 0, line_len = j.end - j.line;
            for (Py_ssize_t k = 0; k < n_spans && !j.oom; k++) {
                if (pos[sp[k].group] != sp[k].entry - row_first + 1) continue;
                if (buf_put(shape, j.line + copied, sp[k].start - copied) < 0 || buf_byte(shape, (char)sp[k].group) < 0)
                    j.oom = 1;
                copied = sp[k].end;
            }
            if (!j.oom && buf_put(shape, j.line + copied, line_len - copied) < 0)
                j.oom = 1;
        }
        if (buf_i64(shape_off, shape->len) < 0)
            j.oom = 1;
    }
    Py_END_ALLOW_THREADS
    lines_close(&in);
    PyMem_Free(wk);
    if (j.oom || failed) {
        free_bufs(b, 13);
        return j.oom ? PyErr_NoMemory() : (PyErr_SetString(PyExc_OverflowError, "too many entries"), NULL);
    }
    PyObject *out = Py_BuildValue("(NNNNNNNNNNN)", buf_bytes(status), buf_bytes(list_off), buf_bytes(j.key_off),
                                  buf_bytes(j.keys), buf_bytes(j.val_off), buf_bytes(j.vals), buf_bytes(j.valid),
                                  buf_bytes(positions), buf_bytes(shape_off), buf_bytes(shape), buf_bytes(instants));
    free_bufs(b, 13);
    return out;
}

/* -- access log lines ------------------------------------------------------------ */

/* The one shape of a common or combined-format line taken here, as a regex:
 *   ^[^\s"]+ [^\s"]+ [^\s"]+ \[[^\]"]+\] "[^\s"\\]+ [^\s"\\]+ [^\s"\\]+" \d{3} (?:\d+|-)(?: "[^"\\]*" "[^"\\]*")?$
 * with no comma in the first field (a client written as an X-Forwarded-For list, which the SQL
 * parser splits). On such a line the SQL parser's regex has exactly one way to match, and gives
 * these same eleven groups; any other line is left to it. \s is RE2's: [\t\n\f\r ]. */

#define CLF_FIELDS 11

/* Advance over a run of bytes of none of the classes in `stop`; NULL if the run is empty. */
static inline const char *run_until(const char *p, const char *end, unsigned char stop) {
    const char *a = p;
    while (p < end && !IS(*p, stop))
        p++;
    return p > a ? p : NULL;
}

static int clf_line(const char *s, const char *end, const char *at[CLF_FIELDS], const char *to[CLF_FIELDS]) {
    const char *p = s, *q;
    /* ip ident user */
    for (int f = 0; f < 3; f++) {
        if (!(q = run_until(p, end, C_SPACE | C_QUOTE | (f == 0 ? C_COMMA : 0))) || q >= end || *q != ' ')
            return -1;
        at[f] = p; to[f] = q; p = q + 1;
    }
    /* [time] */
    if (p >= end || *p != '[') return -1;
    p++;
    if (!(q = run_until(p, end, C_RBRACKET | C_QUOTE)) || q >= end || *q != ']') return -1;
    at[3] = p; to[3] = q; p = q + 1;
    if (end - p < 2 || p[0] != ' ' || p[1] != '"') return -1;
    p += 2;
    /* "method path protocol" */
    for (int f = 4; f < 7; f++) {
        if (!(q = run_until(p, end, C_SPACE | C_QUOTE | C_BACKSLASH)) || q >= end || *q != (f < 6 ? ' ' : '"'))
            return -1;
        at[f] = p; to[f] = q; p = q + 1;
    }
    /* status (three digits) and bytes (digits or '-') */
    if (p >= end || *p != ' ' || end - p < 5) return -1;
    p++;
    for (int d = 0; d < 3; d++) if (p[d] < '0' || p[d] > '9') return -1;
    if (p[3] != ' ') return -1;
    at[7] = p; to[7] = p + 3; p += 4;
    if (p < end && *p == '-') { at[8] = p; to[8] = ++p; }
    else {
        at[8] = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == at[8]) return -1;
        to[8] = p;
    }
    /* the common format ends here; the combined one has "referer" "agent", then ends */
    if (p == end) {
        at[9] = to[9] = at[10] = to[10] = p;
        return 0;
    }
    for (int f = 9; f < 11; f++) {
        if (end - p < 2 || p[0] != ' ' || p[1] != '"') return -1;
        p += 2;
        q = p;
        while (q < end && !IS(*q, C_QUOTE | C_BACKSLASH)) q++;
        if (q >= end || *q != '"') return -1;
        at[f] = p; to[f] = q; p = q + 1;
    }
    return p == end ? 0 : -1;
}

PyDoc_STRVAR(clf_fields_doc,
"clf_fields(offsets, data, selected, first, n, attrs)\n--\n\n"
"Split each selected combined-format access line of an Arrow string array into\n"
"its eleven fields (ip, ident, user, time, method, path, protocol, status, bytes,\n"
"referer, agent), and make its attributes: attrs lists (field index, whether a\n"
"lone '-' is absent) per attribute, in order; an empty field is absent.\n\n"
"Returns (status, [(offsets, bytes)] * 11, (list_offsets, keys, value_offsets,\n"
"values)): a status byte per line (0 not selected, 1 split, 2 left to the SQL\n"
"parser); per field int32 offsets and bytes, an empty value on lines not split\n"
"here; int32 attribute offsets per line, a byte per attribute (its index in\n"
"attrs), and the values' int32 offsets and bytes; then per line the int64 instant\n"
"(µs since the epoch) of a time field written \"DD/Mon/YYYY:HH:MM:SS +HHMM\" on a\n"
"line split here (INT64_MIN otherwise).");

#define CLF_BUFS (1 + 2 * CLF_FIELDS + 5)
#define CLF_TIME 3          /* the time's field */

/* The instant (µs since the epoch) of an access log's time written the usual way,
 * "DD/Mon/YYYY:HH:MM:SS +HHMM" (an English month as written, a real date and time); INT64_MIN for
 * anything else, which the SQL steps' strptime reads as it always did. */
static int64_t clf_time_us(const char *s, Py_ssize_t len) {
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    int d, y, h, mi, sec, oh, om, mo = 0;
    if (len != 26 || s[2] != '/' || s[6] != '/' || s[11] != ':' || s[14] != ':' || s[17] != ':' || s[20] != ' ' ||
        (s[21] != '+' && s[21] != '-') || digits(s, 2, &d) < 0 || digits(s + 7, 4, &y) < 0 ||
        digits(s + 12, 2, &h) < 0 || digits(s + 15, 2, &mi) < 0 || digits(s + 18, 2, &sec) < 0 ||
        digits(s + 22, 2, &oh) < 0 || digits(s + 24, 2, &om) < 0)
        return INT64_MIN;
    while (mo < 12 && memcmp(months + 3 * mo, s + 3, 3) != 0) mo++;
    if (!real_date(y, mo + 1, d) || h > 23 || mi > 59 || sec > 59 || oh > 23 || om > 59)
        return INT64_MIN;
    int64_t offset_s = (s[21] == '-' ? -1 : 1) * (int64_t)(oh * 3600 + om * 60);
    return (days_from_civil(y, mo + 1, d) * 86400 + h * 3600 + mi * 60 + sec - offset_s) * 1000000;
}

static PyObject *clf_fields(PyObject *self, PyObject *args) {
    PyObject *offsets, *data, *selected, *spec;
    Py_ssize_t first, n;
    if (!PyArg_ParseTuple(args, "OOOnnO!", &offsets, &data, &selected, &first, &n, &PyList_Type, &spec))
        return NULL;
    /* The attributes: which field each is, and whether a lone "-" means absent. */
    int attr_field[16], attr_dash[16];
    Py_ssize_t n_attrs = PyList_GET_SIZE(spec);
    if (n_attrs > 16) {
        PyErr_SetString(PyExc_ValueError, "at most 16 attributes");
        return NULL;
    }
    for (Py_ssize_t a = 0; a < n_attrs; a++) {
        if (!PyArg_ParseTuple(PyList_GET_ITEM(spec, a), "ip", &attr_field[a], &attr_dash[a]))
            return NULL;
        if (attr_field[a] < 0 || attr_field[a] >= CLF_FIELDS) {
            PyErr_SetString(PyExc_ValueError, "no such field");
            return NULL;
        }
    }
    Lines in;
    if (lines_open(&in, offsets, data, selected, first, n) < 0)
        return NULL;
    Buf b[CLF_BUFS] = {{0}};
    Buf *status = &b[0];
    /* per line: where its attributes start; per attribute: its index in spec, and its value */
    Buf *attr_off = &b[1 + 2 * CLF_FIELDS], *attr_key = attr_off + 1, *val_off = attr_off + 2, *vals = attr_off + 3;
    Buf *instants = attr_off + 4;
    const char *sel = (const char *)in.selected.buf;
    int oom = 0;
    int32_t entries = 0;
    Py_BEGIN_ALLOW_THREADS
    oom = buf_reserve(status, n) < 0 || buf_reserve(instants, 8 * n) < 0 || buf_i32(attr_off, 0) < 0 ||
          buf_i32(val_off, 0) < 0;
    for (int f = 0; f < CLF_FIELDS && !oom; f++)
        oom = buf_reserve(&b[1 + 2 * f], 4 * (n + 1)) < 0 || buf_i32(&b[1 + 2 * f], 0) < 0;
    for (Py_ssize_t i = 0; i < n && !oom; i++) {
        char st = NOT_ASKED;
        const char *at[CLF_FIELDS], *to[CLF_FIELDS];
        const char *s, *end;
        if (sel[i]) {
            st = line_at(&in, i, &s, &end) == 0 && clf_line(s, end, at, to) == 0 ? PARSED : DEFER;
        }
        status->p[status->len++] = st;
        if (!oom)
            oom = buf_i64(instants, st == PARSED ? clf_time_us(at[CLF_TIME], to[CLF_TIME] - at[CLF_TIME])
                                                 : INT64_MIN) < 0;
        for (int f = 0; f < CLF_FIELDS && !oom; f++) {
            Buf *off = &b[1 + 2 * f], *val = &b[2 + 2 * f];
            if (st == PARSED && buf_put(val, at[f], to[f] - at[f]) < 0) oom = 1;
            else if (val->len > INT32_MAX || buf_i32(off, (int32_t)val->len) < 0) oom = 1;
        }
        /* The attributes of a split line: the non-empty fields, a "-" being empty where it means so. */
        for (Py_ssize_t a = 0; st == PARSED && a < n_attrs && !oom; a++) {
            const char *v = at[attr_field[a]];
            Py_ssize_t len = to[attr_field[a]] - v;
            if (len == 0 || (attr_dash[a] && len == 1 && *v == '-'))
                continue;
            oom = buf_byte(attr_key, (char)a) < 0 || buf_put(vals, v, len) < 0 || vals->len > INT32_MAX ||
                  buf_i32(val_off, (int32_t)vals->len) < 0;
            entries++;
        }
        if (!oom)
            oom = buf_i32(attr_off, entries) < 0;
    }
    Py_END_ALLOW_THREADS
    lines_close(&in);
    if (oom) {
        free_bufs(b, CLF_BUFS);
        return PyErr_NoMemory();
    }
    PyObject *fields = PyList_New(CLF_FIELDS);
    if (!fields) { free_bufs(b, CLF_BUFS); return NULL; }
    for (int f = 0; f < CLF_FIELDS; f++) {
        PyObject *pair = Py_BuildValue("(NN)", buf_bytes(&b[1 + 2 * f]), buf_bytes(&b[2 + 2 * f]));
        if (!pair) { Py_DECREF(fields); free_bufs(b, CLF_BUFS); return NULL; }
        PyList_SET_ITEM(fields, f, pair);
    }
    PyObject *out = Py_BuildValue("(NN(NNNN)N)", buf_bytes(status), fields, buf_bytes(attr_off), buf_bytes(attr_key),
                                  buf_bytes(val_off), buf_bytes(vals), buf_bytes(instants));
    free_bufs(b, CLF_BUFS);
    return out;
}

/* -- skeletons of stored JSON lines ---------------------------------------------------- */

/* A skeleton (storage/lines.py) writes each value its record holds elsewhere as a slot: SLOT, what
 * names the value, SLOT. An attribute's value is named by its key; a column's, by the byte the
 * JSON pass's shape wrote for it (2 to 6); the record's time rendered in UTC with milliseconds,
 * microseconds or whole seconds, each then "Z", by one of these bytes. */
#define SLOT '\x07'
#define TIME_MS_BYTE '\x0e'
#define TIME_US_BYTE '\x0f'
#define TIME_S_BYTE '\x10'
#define FIRST_COLUMN_BYTE '\x02'
#define LAST_COLUMN_BYTE '\x06'
/* A stored line that starts with this is the line itself after it (nothing stands in for anything). */
#define LITERAL_BYTE '\x01'
/* What to do with each line: copy it, make its skeleton, or copy it marked if it must be. */
enum { COPY = 0, SKELETON = 1, KEEP_OR_MARK = 2 };

/* The date last rendered: rows of a batch mostly share their day. */
typedef struct {
    int64_t days;
    int ok;               /* 0: nothing rendered yet; 1: ymd holds days' date; -1: days is out of range */
    char ymd[10];
} DateCache;

/* "YYYY-MM-DDTHH:MM:SS" of ts (µs since the epoch, UTC) into out (19 bytes), and its microseconds;
 * -1 for a year outside 1000..9999 (rendered differently by strftime and Python). */
static int render_seconds(int64_t ts, char out[19], int32_t *micros, DateCache *cache) {
    int64_t secs = ts / 1000000, us = ts % 1000000;
    if (us < 0) { us += 1000000; secs -= 1; }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) { sod += 86400; days -= 1; }
    if (!cache->ok || cache->days != days) {
        /* civil date from days since 1970-01-01 (proleptic Gregorian) */
        int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
        int64_t doe = z - era * 146097, yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        int64_t y = yoe + era * 400, doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
        int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
        if (m <= 2) y++;
        cache->days = days;
        cache->ok = y < 1000 || y > 9999 ? -1 : 1;
        if (cache->ok > 0) {
            char *p = cache->ymd;
            *p++ = (char)('0' + y / 1000); *p++ = (char)('0' + y / 100 % 10);
            *p++ = (char)('0' + y / 10 % 10); *p++ = (char)('0' + y % 10); *p++ = '-';
            *p++ = (char)('0' + m / 10); *p++ = (char)('0' + m % 10); *p++ = '-';
            *p++ = (char)('0' + d / 10); *p++ = (char)('0' + d % 10);
        }
    }
    if (cache->ok < 0) return -1;
    memcpy(out, cache->ymd, 10);
    int hh = (int)(sod / 3600), mi = (int)(sod / 60 % 60), ss = (int)(sod % 60);
    char *p = out + 10;
    *p++ = 'T';
    *p++ = (char)('0' + hh / 10); *p++ = (char)('0' + hh % 10); *p++ = ':';
    *p++ = (char)('0' + mi / 10); *p++ = (char)('0' + mi % 10); *p++ = ':';
    *p++ = (char)('0' + ss / 10); *p++ = (char)('0' + ss % 10);
    *micros = (int32_t)us;
    return 0;
}

/* The time byte for the string s (len bytes) when it is one of ts's renderings, else 0. */
static char time_byte(const char *s, Py_ssize_t len, const char secs[19], int32_t micros) {
    if ((len != 20 && len != 24 && len != 27) || s[len - 1] != 'Z' || memcmp(s, secs, 19) != 0)
        return 0;
    if (len == 20) return TIME_S_BYTE;
    if (s[19] != '.') return 0;
    int digits = len == 24 ? 3 : 6;
    int32_t v = len == 24 ? micros / 1000 : micros;
    for (int k = digits - 1; k >= 0; k--, v /= 10)
        if (s[20 + k] != (char)('0' + v % 10)) return 0;
    return len == 24 ? TIME_MS_BYTE : TIME_US_BYTE;
}

/* A string that may stand in a skeleton as a key or a value: no quote, backslash or control byte. */
static inline int plain(const char *s, Py_ssize_t len) {
    for (Py_ssize_t k = 0; k < len; k++)
        if (IS(s[k], C_QUOTE | C_BACKSLASH | C_CONTROL)) return 0;
    return 1;
}

/* A key's hash from its length and its first and last eight bytes (keys are short). */
static inline uint32_t hash_key(const char *s, Py_ssize_t len) {
    uint64_t a = 0, b = 0;
    if (len >= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, s + len - 8, 8);
    } else {
        memcpy(&a, s, (size_t)len);
    }
    uint64_t h = a * 0x9E3779B97F4A7C15ull ^ (b + (uint64_t)len) * 0xC2B2AE3D27D4EB4Full;
    return (uint32_t)(h >> 32) ^ (uint32_t)h;
}

/* Up to this many attributes a row's keys are looked up one by one; above, in a hash table. */
#define LINEAR_ATTRS 16

typedef struct {
    const int32_t *key_off, *val_off;
    const char *keys, *vals;
    Py_ssize_t key_first, val_first;
    const unsigned char *val_valid;        /* a bitmap, or NULL: all valid */
    int64_t lo, hi;                        /* the row's entries */
    int hashed;
    Buf *table;                            /* int32 slots: entry - lo + 1, 0 empty, negative a repeated key */
    uint32_t mask;
} AttrIndex;

static inline void attr_key(const AttrIndex *a, int64_t e, const char **s, Py_ssize_t *len) {
    int32_t x = a->key_off[a->key_first + e], y = a->key_off[a->key_first + e + 1];
    *s = a->keys + x;
    *len = y - x;
}

static inline int attr_value(const AttrIndex *a, int64_t e, const char **s, Py_ssize_t *len) {
    Py_ssize_t at = a->val_first + e;
    if (a->val_valid && !(a->val_valid[at >> 3] & (1u << (at & 7)))) return 0;
    int32_t x = a->val_off[at], y = a->val_off[at + 1];
    *s = a->vals + x;
    *len = y - x;
    return 1;
}

/* Index a row's entries [lo, hi) by key (a table only for many of them).
 * 0: none, 1: some, -1: out of memory. */
static int attr_index(AttrIndex *a, int64_t lo, int64_t hi) {
    a->lo = lo;
    a->hi = hi;
    a->hashed = hi - lo > LINEAR_ATTRS;
    if (!a->hashed) return hi > lo;
    uint32_t size = 8;
    while (size < 2 * (uint64_t)(hi - lo)) size *= 2;
    a->table->len = 0;
    if (buf_reserve(a->table, (Py_ssize_t)size * 4) < 0) return -1;
    int32_t *slot = (int32_t *)a->table->p;
    memset(slot, 0, (size_t)size * 4);
    a->mask = size - 1;
    for (int64_t e = lo; e < hi; e++) {
        const char *k;
        Py_ssize_t klen;
        attr_key(a, e, &k, &klen);
        for (uint32_t h = hash_key(k, klen) & a->mask;; h = (h + 1) & a->mask) {
            int32_t s = slot[h];
            if (s == 0) { slot[h] = (int32_t)(e - lo + 1); break; }
            const char *o;
            Py_ssize_t olen;
            attr_key(a, lo + (s < 0 ? -s : s) - 1, &o, &olen);
            /* a key held twice names no value: its slot is marked negative */
            if (olen == klen && memcmp(o, k, (size_t)klen) == 0) { slot[h] = s < 0 ? s : -s; break; }
        }
    }
    return 1;
}

/* The entry of key k (non-empty), or -1: none, or more than one. */
static int64_t attr_find(const AttrIndex *a, const char *k, Py_ssize_t klen) {
    if (!a->hashed) {
        int64_t found = -1;
        for (int64_t e = a->lo; e < a->hi; e++) {
            const char *o;
            Py_ssize_t olen;
            attr_key(a, e, &o, &olen);
            if (olen == klen && memcmp(o, k, (size_t)klen) == 0) {
                if (found >= 0) return -1;
                found = e;
            }
        }
        return found;
    }
    const int32_t *slot = (const int32_t *)a->table->p;
    for (uint32_t h = hash_key(k, klen) & a->mask;; h = (h + 1) & a->mask) {
        int32_t s = slot[h];
        if (s == 0) return -1;
        const char *o;
        Py_ssize_t olen;
        attr_key(a, a->lo + (s < 0 ? -s : s) - 1, &o, &olen);
        if (olen == klen && memcmp(o, k, (size_t)klen) == 0) return s < 0 ? -1 : a->lo + s - 1;
    }
}

/* The first byte of [p, end) below 7 (a column byte of the JSON pass's shape, in a JSON line), or end.
 * Eight bytes at a time: a byte below 7 sets the top bit of its lane in (x - 0x07...) & ~x, and the
 * lowest lane set is the first such byte (a borrow only carries past a lane that was below). */
static inline const char *below_seven(const char *p, const char *end) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    for (; end - p >= 8; p += 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t hit = (x - 7 * ones) & ~x & highs;
        if (hit) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return p + (__builtin_ctzll(hit) >> 3);
#else
            break;
#endif
        }
    }
    while (p < end && (unsigned char)*p >= 7) p++;
    return p;
}

/* Line text [a, b) into out, each column byte of the JSON pass's shape as its slot. */
static int put_text(Buf *out, const char *a, const char *b) {
    for (const char *p = below_seven(a, b); p < b; p = below_seven(p + 1, b)) {
        if (*p >= FIRST_COLUMN_BYTE && *p <= LAST_COLUMN_BYTE) {
            char slot[3] = {SLOT, *p, SLOT};
            if (buf_put(out, a, p - a) < 0 || buf_put(out, slot, 3) < 0) return -1;
            a = p + 1;
        }
    }
    return buf_put(out, a, b - a);
}

/* A slot named by [name, name + len) into out. */
static int put_slot(Buf *out, const char *name, Py_ssize_t len) {
    if (buf_byte(out, SLOT) < 0 || buf_put(out, name, len) < 0 || buf_byte(out, SLOT) < 0) return -1;
    return 0;
}

/* The end of the JSON string whose opening quote is at q (its closing quote, or end), and whether
 * it holds nothing escaped and no control byte. */
static inline const char *string_end(const char *q, const char *end, int *clean) {
    const char *c = q + 1;
    *clean = 1;
    for (;;) {
        while (c < end && !IS(*c, C_QUOTE | C_BACKSLASH | C_CONTROL)) c++;
        if (c >= end || *c == '"') return c;
        *clean = 0;
        c += *c == '\\' ? 2 : 1;
    }
}

/* The skeleton of one line [s, end) into out. */
static int skeleton(const char *s, const char *end, const AttrIndex *a, int has_attrs, int64_t ts, DateCache *dates,
                    Buf *out) {
    char secs[19];
    int32_t micros = 0;
    int timed = render_seconds(ts, secs, &micros, dates) == 0;
    const char *copied = s, *p = s;
    char b;
    for (;;) {
        const char *q1 = memchr(p, '"', (size_t)(end - p));
        if (!q1) break;
        int clean, vclean;
        const char *q2 = string_end(q1, end, &clean);
        if (q2 >= end) break;
        Py_ssize_t len = q2 - q1 - 1;
        const char *r = q2 + 1;
        while (r < end && IS(*r, C_JSON_WS)) r++;
        if (r >= end || *r != ':') {
            /* a string that is not a key: it may be the time */
            if (timed && clean && (b = time_byte(q1 + 1, len, secs, micros)) != 0) {
                if (put_text(out, copied, q1 + 1) < 0 || put_slot(out, &b, 1) < 0) return -1;
                copied = q2;
            }
            p = q2 + 1;
            continue;
        }
        /* a key: its value becomes its slot when it is written plainly and is attrs[key] */
        r++;
        while (r < end && IS(*r, C_JSON_WS)) r++;
        int named = has_attrs && clean && len > 0;
        int64_t e;
        const char *v;
        Py_ssize_t vlen;
        if (r < end && *r == '"') {
            const char *q4 = string_end(r, end, &vclean);
            if (q4 >= end) break;
            Py_ssize_t slen = q4 - r - 1;
            if (named && vclean && slen > 0 && (e = attr_find(a, q1 + 1, len)) >= 0 && attr_value(a, e, &v, &vlen) &&
                vlen == slen && memcmp(r + 1, v, (size_t)vlen) == 0) {
                if (put_text(out, copied, r + 1) < 0 || put_slot(out, q1 + 1, len) < 0) return -1;
                copied = q4;
            } else if (timed && vclean && (b = time_byte(r + 1, slen, secs, micros)) != 0) {
                if (put_text(out, copied, r + 1) < 0 || put_slot(out, &b, 1) < 0) return -1;
                copied = q4;
            }
            p = q4 + 1;
            continue;
        }
        if (named && r < end && !IS(*r, C_CONTROL) && (e = attr_find(a, q1 + 1, len)) >= 0 &&
            attr_value(a, e, &v, &vlen) && vlen > 0 && end - r > vlen && memcmp(r, v, (size_t)vlen) == 0 &&
            (r[vlen] == ',' || r[vlen] == '}' || r[vlen] == ']' || IS(r[vlen], C_JSON_WS)) && plain(v, vlen)) {
            if (put_text(out, copied, r) < 0 || put_slot(out, q1 + 1, len) < 0) return -1;
            copied = r + vlen;
        }
        p = r;
    }
    return put_text(out, copied, end);
}

PyDoc_STRVAR(skeletons_doc,
"skeletons(offsets, data, selected, first, n, ts, ts_first, attr_offsets, attr_valid, attr_first,\n"
"          key_offsets, keys, key_first, value_offsets, values, value_valid, value_first)\n--\n\n"
"Each selected stored JSON line of an Arrow string array with the values its record\n"
"keeps elsewhere written as slots (byte 7, a name, byte 7; storage/lines.py): after\n"
"a key k (\"k\", JSON whitespace, ':', whitespace), a value written plainly (a string\n"
"with nothing escaped, or a token ending at ',', '}', ']' or whitespace) that is the\n"
"record's attribute k is the slot named k; a string that is the record's time in UTC\n"
"as YYYY-MM-DDTHH:MM:SS.mmmZ, .uuuuuuZ or Z is the slot named byte 14, 15 or 16\n"
"(quotes kept); the JSON pass's column bytes (2 to 6) become the slots they name.\n"
"Only keys and values free of quotes, backslashes and control bytes count, and keys\n"
"the record's attributes hold once. A line starting with byte 1 is copied as it is.\n\n"
"selected: a byte per line: 1 a JSON line (its skeleton), 2 a line kept as it is\n"
"(byte 1 put before it when it holds a control byte other than tab, LF or CR),\n"
"0 copied as it is (a null one).\n"
"ts: int64 microseconds; the attributes: a list array's int32 offsets and validity\n"
"bitmap (or None), its keys' and values' int32 offsets and bytes, the values'\n"
"validity bitmap (or None); *_first: each array's offset.\n\n"
"Returns (offsets, data): int32 offsets and the bytes of a string array.");

static PyObject *skeletons(PyObject *self, PyObject *args) {
    PyObject *offsets, *data, *selected, *ts_o, *aoff_o, *avalid_o, *koff_o, *keys_o, *voff_o, *vals_o, *vvalid_o;
    Py_ssize_t first, n, ts_first, a_first, k_first, v_first;
    if (!PyArg_ParseTuple(args, "OOOnnOnOOnOOnOOOn", &offsets, &data, &selected, &first, &n, &ts_o, &ts_first,
                          &aoff_o, &avalid_o, &a_first, &koff_o, &keys_o, &k_first, &voff_o, &vals_o, &vvalid_o,
                          &v_first))
        return NULL;
    Lines in;
    if (lines_open(&in, offsets, data, selected, first, n) < 0)
        return NULL;
    /* ts, attr offsets, attr validity, key offsets, keys, value offsets, values, value validity */
    Py_buffer v[8];
    memset(v, 0, sizeof v);
    PyObject *objs[8] = {ts_o, aoff_o, avalid_o, koff_o, keys_o, voff_o, vals_o, vvalid_o};
    PyObject *out = NULL;
    int opened = 0;
    for (; opened < 8; opened++) {
        if (objs[opened] != Py_None && PyObject_GetBuffer(objs[opened], &v[opened], PyBUF_SIMPLE) < 0)
            goto done;
    }
    if (ts_first < 0 || a_first < 0 || k_first < 0 || v_first < 0 || !v[0].obj || !v[1].obj || !v[3].obj ||
        !v[4].obj || !v[5].obj || !v[6].obj || (ts_first + n) * 8 > v[0].len || (a_first + n + 1) * 4 > v[1].len ||
        (v[2].obj && (a_first + n + 7) / 8 > v[2].len)) {
        PyErr_SetString(PyExc_ValueError, "times or attributes shorter than the lines");
        goto done;
    }
    const int32_t *a_off = (const int32_t *)v[1].buf;
    const unsigned char *a_valid = v[2].obj ? (const unsigned char *)v[2].buf : NULL;
    /* Every entry the rows name must be inside the keys' and values' buffers. */
    int64_t e_lo = a_off[a_first], e_hi = a_off[a_first + n];
    if (e_lo < 0 || e_hi < e_lo || (k_first + e_hi + 1) * 4 > v[3].len || (v_first + e_hi + 1) * 4 > v[5].len ||
        (v[7].obj && (v_first + e_hi + 7) / 8 > v[7].len)) {
        PyErr_SetString(PyExc_ValueError, "attribute offsets outside their keys or values");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (a_off[a_first + i + 1] < a_off[a_first + i]) {
            PyErr_SetString(PyExc_ValueError, "attribute offsets that go backwards");
            goto done;
        }
    }
    const int32_t *k_off = (const int32_t *)v[3].buf, *v_off = (const int32_t *)v[5].buf;
    for (int64_t e = e_lo; e <= e_hi; e++) {
        int32_t ka = k_off[k_first + e], va = v_off[v_first + e];
        if (ka < 0 || ka > v[4].len || va < 0 || va > v[6].len ||
            (e < e_hi && (k_off[k_first + e + 1] < ka || v_off[v_first + e + 1] < va))) {
            PyErr_SetString(PyExc_ValueError, "attribute key or value offsets outside their bytes");
            goto done;
        }
    }
    /* The output goes straight into bytes objects: a skeleton is never more than three times its line
     * (a column byte becomes a slot of three; an attribute's slot, its key and two bytes, replaces a
     * value of at least one byte after that key, whose quotes and text stay), a marked line one more. */
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *s, *end;
        if (line_at(&in, i, &s, &end) < 0) {
            PyErr_SetString(PyExc_ValueError, "line offsets outside the data");
            goto done;
        }
        total += end - s;
    }
    if (total > (PY_SSIZE_T_MAX - n) / 3) {
        PyErr_SetString(PyExc_OverflowError, "lines too long");
        goto done;
    }
    /* (a skeleton is about as long as its line: the room for that is taken at once, from spare memory) */
    Buf b[3] = {{0}};
    Buf *o_off = &b[0], *o_data = &b[1];
    if (buf_presize(o_off, 4 * (n + 1)) < 0 || buf_presize(o_data, total + n) < 0) {
        free_bufs(b, 3);
        PyErr_NoMemory();
        goto done;
    }
    AttrIndex ai = {.key_off = k_off, .val_off = v_off, .keys = (const char *)v[4].buf,
                    .vals = (const char *)v[6].buf, .key_first = k_first, .val_first = v_first,
                    .val_valid = v[7].obj ? (const unsigned char *)v[7].buf : NULL, .table = &b[2]};
    const int64_t *ts = (const int64_t *)v[0].buf + ts_first;
    const char *sel = (const char *)in.selected.buf;
    int oom = 0, bad = 0;
    DateCache dates = {0, 0, {0}};
    Py_BEGIN_ALLOW_THREADS
    oom = buf_i32(o_off, 0) < 0;
    for (Py_ssize_t i = 0; i < n && !oom && !bad; i++) {
        const char *s, *end;
        if (line_at(&in, i, &s, &end) < 0) { bad = 1; break; }
        if (sel[i] == KEEP_OR_MARK) {
            /* a line kept as it is: marked when it holds a byte that would be read as standing for a value */
            const char *q = s;
            while (q < end && !IS(*q, C_RESERVED)) q++;
            oom = (q < end && buf_byte(o_data, LITERAL_BYTE) < 0) || buf_put(o_data, s, end - s) < 0;
        } else if (sel[i] != SKELETON || s == end || *s == LITERAL_BYTE) {
            oom = buf_put(o_data, s, end - s) < 0;
        } else {
            Py_ssize_t row = a_first + i;
            int64_t lo = a_off[row], hi = a_off[row + 1];
            int has = 0;
            if (!a_valid || (a_valid[row >> 3] & (1u << (row & 7)))) {
                has = attr_index(&ai, lo, hi);
                if (has < 0) { oom = 1; break; }
            }
            oom = skeleton(s, end, &ai, has, ts[i], &dates, o_data) < 0;
        }
        if (!oom && o_data->len > INT32_MAX) bad = 2;
        if (!oom && !bad) oom = buf_i32(o_off, (int32_t)o_data->len) < 0;
    }
    Py_END_ALLOW_THREADS
    if (oom) PyErr_NoMemory();
    else if (bad == 1) PyErr_SetString(PyExc_ValueError, "line offsets outside the data");
    else if (bad == 2) PyErr_SetString(PyExc_OverflowError, "lines over 2 GiB in one array");
    else out = Py_BuildValue("(NN)", buf_bytes(o_off), buf_bytes(o_data));
    free_bufs(b, 3);
done:
    for (int k = 0; k < opened; k++)
        if (v[k].obj) PyBuffer_Release(&v[k]);
    lines_close(&in);
    return out;
}

/* -- a batch's lines ---------------------------------------------------------------- */

PyDoc_STRVAR(join_lines_doc,
"join_lines(parts)\n--\n\n"
"One array of lines from several Arrow binary arrays of records, each given as\n"
"(offsets, data, first, n), without each record's terminator: its trailing\n"
"newlines and then one carriage return.\n\n"
"Returns (offsets, data): int32 offsets and the bytes of a binary array.");

static PyObject *join_lines(PyObject *self, PyObject *args) {
    PyObject *parts;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &parts))
        return NULL;
    Py_ssize_t k = PyList_GET_SIZE(parts), total_rows = 0, total_bytes = 0;
    Py_buffer *bufs = PyMem_Calloc((size_t)(2 * k + 1), sizeof(Py_buffer));
    Py_ssize_t *firsts = PyMem_Calloc((size_t)(2 * k + 1), sizeof(Py_ssize_t));
    if (!bufs || !firsts) {
        PyMem_Free(bufs);
        PyMem_Free(firsts);
        return PyErr_NoMemory();
    }
    Py_ssize_t *counts = firsts + k;
    Py_ssize_t opened = 0;
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *offsets, *data;
        Py_ssize_t first, n;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(parts, i), "OOnn", &offsets, &data, &first, &n))
            goto done;
        if (PyObject_GetBuffer(offsets, &bufs[2 * i], PyBUF_SIMPLE) < 0)
            goto done;
        opened = 2 * i + 1;
        if (PyObject_GetBuffer(data, &bufs[2 * i + 1], PyBUF_SIMPLE) < 0)
            goto done;
        opened = 2 * i + 2;
        if (first < 0 || n < 0 || (first + n + 1) * 4 > bufs[2 * i].len) {
            PyErr_SetString(PyExc_ValueError, "offsets shorter than the array");
            goto done;
        }
        const int32_t *off = (const int32_t *)bufs[2 * i].buf;
        if (off[first] < 0 || off[first + n] > bufs[2 * i + 1].len) {
            PyErr_SetString(PyExc_ValueError, "offsets outside the data");
            goto done;
        }
        for (Py_ssize_t r = first; r < first + n; r++) {
            if (off[r + 1] < off[r]) {
                PyErr_SetString(PyExc_ValueError, "offsets that go backwards");
                goto done;
            }
        }
        firsts[i] = first;
        counts[i] = n;
        total_rows += n;
        total_bytes += off[first + n] - off[first];
    }
    if (total_bytes > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "lines over 2 GiB in one array");
        goto done;
    }
    PyObject *offsets_out = PyBytes_FromStringAndSize(NULL, (total_rows + 1) * 4);
    PyObject *data_out = PyBytes_FromStringAndSize(NULL, total_bytes);
    if (!offsets_out || !data_out) {
        Py_XDECREF(offsets_out);
        Py_XDECREF(data_out);
        goto done;
    }
    int32_t *o = (int32_t *)PyBytes_AS_STRING(offsets_out);
    char *d = PyBytes_AS_STRING(data_out);
    int32_t at = 0;
    Py_ssize_t row = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k; i++) {
        const int32_t *off = (const int32_t *)bufs[2 * i].buf + firsts[i];
        const char *src = (const char *)bufs[2 * i + 1].buf;
        for (Py_ssize_t r = 0; r < counts[i]; r++) {
            int32_t a = off[r], b = off[r + 1];
            while (b > a && src[b - 1] == '\n') b--;
            if (b > a && src[b - 1] == '\r') b--;
            o[row++] = at;
            memcpy(d + at, src + a, (size_t)(b - a));
            at += b - a;
        }
    }
    o[row] = at;
    Py_END_ALLOW_THREADS
    /* Shrink the data to what was kept (terminators dropped). */
    if (at != total_bytes && _PyBytes_Resize(&data_out, at) < 0) {
        Py_DECREF(offsets_out);
        goto done;
    }
    out = Py_BuildValue("(NN)", offsets_out, data_out);
done:
    for (Py_ssize_t i = 0; i < opened; i++)
        PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    PyMem_Free(firsts);
    return out;
}

/* -- attributes kept ------------------------------------------------------------ */

/* Whether off[0..n] rises (never falls) from 0 on and ends within len: offsets a pass may follow. */
static int offsets_fit(const int64_t *off, Py_ssize_t n, Py_ssize_t len) {
    if (n < 0 || off[0] < 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (off[i + 1] < off[i])
            return 0;
    return off[n] <= len;
}

PyDoc_STRVAR(attrs_kept_doc,
"attrs_kept(rows, key_off, keys, val_off, vals, valid, keep, prepend, host_off, hosts)\n--\n\n"
"Each row's attributes from the compiled JSON pass's entries: rows (int64, n + 1) says which\n"
"entries are a row's, key_off/val_off (int64) and keys/vals their bytes, valid (a byte per\n"
"entry, 0: null value), keep (a byte per entry) which stay; a row with prepend (a byte per row)\n"
"set starts with agent.host, its value the next of hosts (int64 host_off, in row order).\n\n"
"Returns (list_offsets, key_offsets, keys, value_offsets, values, valid): int32 offsets, the\n"
"bytes, and a byte per element (0: a null value).");

static PyObject *attrs_kept(PyObject *self, PyObject *args) {
    PyObject *objs[10];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6],
                          &objs[7], &objs[8], &objs[9]))
        return NULL;
    Py_buffer v[10];
    int opened = 0;
    PyObject *out = NULL;
    for (; opened < 10; opened++)
        if (PyObject_GetBuffer(objs[opened], &v[opened], PyBUF_SIMPLE) < 0)
            goto done;
    const int64_t *rows = v[0].buf, *k_off = v[1].buf, *v_off = v[3].buf, *h_off = v[8].buf;
    const char *keys = v[2].buf, *vals = v[4].buf, *hosts = v[9].buf;
    const uint8_t *valid = v[5].buf, *keep = v[6].buf, *prepend = v[7].buf;
    Py_ssize_t n = v[0].len / 8 - 1, m = v[5].len, h = v[8].len / 8 - 1;
    int bad = n < 0 || v[6].len != m || v[7].len != n || v[1].len != 8 * (m + 1) || v[3].len != 8 * (m + 1) ||
              h < 0 || !offsets_fit(rows, n, m) || !offsets_fit(k_off, m, v[2].len) ||
              !offsets_fit(v_off, m, v[4].len) || !offsets_fit(h_off, h, v[9].len);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "offsets that do not fit the entries");
        goto done;
    }
    Buf b[6] = {{0}};
    Buf *l_out = &b[0], *ko = &b[1], *kd = &b[2], *vo = &b[3], *vd = &b[4], *vv = &b[5];
    int oom = buf_presize(kd, v[2].len + 10 * n) < 0 || buf_presize(vd, v[4].len + v[9].len) < 0 ||
              buf_presize(ko, 4 * (m + n + 1)) < 0 || buf_presize(vo, 4 * (m + n + 1)) < 0;
    Py_ssize_t hosted = 0;
    static const char AGENT_HOST[] = "agent.host";
    Py_BEGIN_ALLOW_THREADS
    oom = oom || buf_i32(l_out, 0) < 0 || buf_i32(ko, 0) < 0 || buf_i32(vo, 0) < 0;
    int32_t elements = 0;
    for (Py_ssize_t i = 0; i < n && !oom; i++) {
        if (prepend[i]) {
            if (hosted >= h) { bad = 1; break; }
            oom = buf_put(kd, AGENT_HOST, sizeof AGENT_HOST - 1) < 0 ||
                  buf_put(vd, hosts + h_off[hosted], h_off[hosted + 1] - h_off[hosted]) < 0 || buf_byte(vv, 1) < 0;
            hosted++;
            elements++;
            oom = oom || buf_i32(ko, (int32_t)kd->len) < 0 || buf_i32(vo, (int32_t)vd->len) < 0;
        }
        for (int64_t e = rows[i]; e < rows[i + 1] && !oom; e++) {
            if (!keep[e])
                continue;
            oom = buf_put(kd, keys + k_off[e], k_off[e + 1] - k_off[e]) < 0 ||
                  buf_put(vd, vals + v_off[e], v_off[e + 1] - v_off[e]) < 0 || buf_byte(vv, valid[e] != 0) < 0 ||
                  buf_i32(ko, (int32_t)kd->len) < 0 || buf_i32(vo, (int32_t)vd->len) < 0;
            elements++;
        }
        if (kd->len > INT32_MAX || vd->len > INT32_MAX) { bad = 2; break; }
        oom = oom || buf_i32(l_out, elements) < 0;
    }
    Py_END_ALLOW_THREADS
    if (oom) PyErr_NoMemory();
    else if (bad == 1) PyErr_SetString(PyExc_ValueError, "fewer hosts than rows with agent.host");
    else if (bad == 2) PyErr_SetString(PyExc_OverflowError, "attributes over 2 GiB in one array");
    else out = Py_BuildValue("(NNNNNN)", buf_bytes(l_out), buf_bytes(ko), buf_bytes(kd), buf_bytes(vo), buf_bytes(vd),
                             buf_bytes(vv));
    free_bufs(b, 6);
done:
    for (int k = 0; k < opened; k++)
        PyBuffer_Release(&v[k]);
    return out;
}

/* -- values at positions ----------------------------------------------------------- */

PyDoc_STRVAR(values_at_doc,
"values_at(rows, val_off, vals, valid, valid_first, positions)\n--\n\n"
"The values at given entries of each row: rows (int64, n + 1) says which entries are a row's,\n"
"val_off (int64) and vals their bytes, valid their Arrow validity bitmap (None: all valid) from\n"
"bit valid_first; positions (int32, k rows of n, C order) the 1-based entry of each row per\n"
"column wanted (0: none). Returns per column (int32 offsets, bytes, a byte per row: 0 null).");

static PyObject *values_at(PyObject *self, PyObject *args) {
    PyObject *objs[6];
    Py_ssize_t valid_first;
    if (!PyArg_ParseTuple(args, "OOOOnO", &objs[0], &objs[1], &objs[2], &objs[3], &valid_first, &objs[5]))
        return NULL;
    Py_buffer v[6];
    int opened = 0;
    PyObject *out = NULL;
    int has_valid = objs[3] != Py_None;
    for (; opened < 6; opened++) {
        if (opened == 3 && !has_valid) { v[3].obj = NULL; v[3].buf = NULL; v[3].len = 0; continue; }
        if (opened == 4) { v[4].obj = NULL; v[4].len = 0; continue; }
        if (PyObject_GetBuffer(objs[opened], &v[opened], PyBUF_SIMPLE) < 0)
            goto done;
    }
    const int64_t *rows = v[0].buf, *off = v[1].buf;
    const char *vals = v[2].buf;
    const uint8_t *bits = v[3].buf;
    const int32_t *pos = v[5].buf;
    Py_ssize_t n = v[0].len / 8 - 1, m = v[1].len / 8 - 1, k = n > 0 ? v[5].len / 4 / n : 0;
    int bad = n < 0 || m < 0 || (n > 0 && v[5].len != 4 * k * n) || valid_first < 0 ||
              (has_valid && (valid_first + m + 7) / 8 > v[3].len) || !offsets_fit(rows, n, m) ||
              !offsets_fit(off, m, v[2].len);
    for (Py_ssize_t j = 0; !bad && j < k * n; j++)
        bad = pos[j] < 0 || (pos[j] > 0 && pos[j] > rows[j % n + 1] - rows[j % n]);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "offsets or positions that do not fit the entries");
        goto done;
    }
    out = PyList_New(k);
    if (!out)
        goto done;
    for (Py_ssize_t c = 0; c < k; c++) {
        Buf b[3] = {{0}};
        const int32_t *p = pos + c * n;
        int oom = 0, big = 0;
        Py_BEGIN_ALLOW_THREADS
        oom = buf_reserve(&b[0], 4 * (n + 1)) < 0 || buf_reserve(&b[2], n) < 0 || buf_i32(&b[0], 0) < 0;
        for (Py_ssize_t i = 0; i < n && !oom; i++) {
            int ok = 0;
            if (p[i] > 0) {
                int64_t e = rows[i] + p[i] - 1, bit = valid_first + e;
                ok = !has_valid || (bits[bit >> 3] >> (bit & 7)) & 1;
                if (ok)
                    oom = buf_put(&b[1], vals + off[e], off[e + 1] - off[e]) < 0;
            }
            if (b[1].len > INT32_MAX) { big = 1; break; }
            oom = oom || buf_byte(&b[2], (char)ok) < 0 || buf_i32(&b[0], (int32_t)b[1].len) < 0;
        }
        Py_END_ALLOW_THREADS
        PyObject *col = oom || big ? NULL : Py_BuildValue("(NNN)", buf_bytes(&b[0]), buf_bytes(&b[1]),
                                                          buf_bytes(&b[2]));
        free_bufs(b, 3);
        if (!col) {
            if (oom) PyErr_NoMemory();
            else if (big) PyErr_SetString(PyExc_OverflowError, "values over 2 GiB in one array");
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, c, col);
    }
done:
    for (int j = 0; j < opened; j++)
        if (v[j].obj) PyBuffer_Release(&v[j]);
    return out;
}

PyDoc_STRVAR(any_contains_doc,
"any_contains(offsets, data, selected, first, n, word)\n--\n\n"
"Whether any selected line of an Arrow string array holds the bytes word (as SQL's contains).");

static PyObject *any_contains(PyObject *self, PyObject *args) {
    PyObject *offsets, *data, *selected;
    Py_ssize_t first, n, wlen;
    const char *word;
    if (!PyArg_ParseTuple(args, "OOOnny#", &offsets, &data, &selected, &first, &n, &word, &wlen))
        return NULL;
    Lines in;
    if (lines_open(&in, offsets, data, selected, first, n) < 0)
        return NULL;
    const uint8_t *sel = (const uint8_t *)in.selected.buf;
    int found = 0, bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !found; i++) {
        const char *s, *end;
        if (!sel[i])
            continue;
        if (line_at(&in, i, &s, &end) < 0) {
            bad = 1;
            break;
        }
        found = wlen == 0 || memmem(s, (size_t)(end - s), word, (size_t)wlen) != NULL;
    }
    Py_END_ALLOW_THREADS
    lines_close(&in);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "offsets outside the data");
        return NULL;
    }
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"join_lines", join_lines, METH_VARARGS, join_lines_doc},
    {"json_entries", json_entries, METH_VARARGS, json_entries_doc},
    {"clf_fields", clf_fields, METH_VARARGS, clf_fields_doc},
    {"skeletons", skeletons, METH_VARARGS, skeletons_doc},
    {"any_contains", any_contains, METH_VARARGS, any_contains_doc},
    {"attrs_kept", attrs_kept, METH_VARARGS, attrs_kept_doc},
    {"values_at", values_at, METH_VARARGS, values_at_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "Ingest's compiled loops: a batch's lines, the JSON and access-log pre-passes, stored lines' skeletons.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    init_classes();
    if (PyType_Ready(&BlockType) < 0)
        return NULL;
    return PyModule_Create(&module);
}

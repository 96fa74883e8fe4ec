/* The trigram bitmaps of storage/tokens.py, in one pass over a segment's message bytes.
 *
 * The numpy version made five arrays the size of the text (translated codes,
 * three products, the ids) and scattered every id into a boolean array; at a
 * few hundred megabytes a flush that was a large share of writing a segment.
 * Here each byte is looked up once and its trigram's bit set in place.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SYMBOLS 37
#define TRIGRAMS (SYMBOLS * SYMBOLS * SYMBOLS)
#define BYTES ((TRIGRAMS + 7) / 8)

PyDoc_STRVAR(bitmaps_doc,
"bitmaps(data, bounds, table)\n--\n\n"
"The packed trigram bitmap of each byte range data[bounds[g]:bounds[g + 1]]\n"
"(bounds: int64), symbols by the 256-byte translation table; bit i of a bitmap\n"
"is bit 7 - i % 8 of its byte i // 8, as numpy.packbits writes them.\n\n"
"Returns the bitmaps back to back, 6,332 bytes each.");

static PyObject *bitmaps(PyObject *self, PyObject *args) {
    Py_buffer data, bounds, table;
    if (!PyArg_ParseTuple(args, "y*y*y*", &data, &bounds, &table))
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t groups = bounds.len / 8 - 1;
    const int64_t *b = (const int64_t *)bounds.buf;
    if (table.len != 256 || bounds.len % 8 || groups < 0) {
        PyErr_SetString(PyExc_ValueError, "a 256-byte table and at least one int64 bound are needed");
        goto done;
    }
    for (int c = 0; c < 256; c++) {
        if (((const unsigned char *)table.buf)[c] >= SYMBOLS) {
            PyErr_SetString(PyExc_ValueError, "a table symbol is out of range");
            goto done;
        }
    }
    for (Py_ssize_t g = 0; g < groups; g++) {
        if (b[g] < 0 || b[g + 1] < b[g] || b[g + 1] > data.len) {
            PyErr_SetString(PyExc_ValueError, "bounds outside the data");
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, groups * BYTES);
    if (!out)
        goto done;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *d = (const unsigned char *)data.buf, *lut = (const unsigned char *)table.buf;
    Py_BEGIN_ALLOW_THREADS
    memset(bits, 0, (size_t)(groups * BYTES));
    for (Py_ssize_t g = 0; g < groups; g++) {
        unsigned char *map = bits + g * BYTES;
        int64_t i = b[g], end = b[g + 1];
        if (end - i < 3)
            continue;
        unsigned c0 = lut[d[i]], c1 = lut[d[i + 1]];
        for (i += 2; i < end; i++) {
            unsigned c2 = lut[d[i]];
            unsigned id = (c0 * SYMBOLS + c1) * SYMBOLS + c2;
            map[id >> 3] |= (unsigned char)(0x80u >> (id & 7));
            c0 = c1;
            c1 = c2;
        }
    }
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&bounds);
    PyBuffer_Release(&table);
    return out;
}

static PyMethodDef methods[] = {
    {"bitmaps", bitmaps, METH_VARARGS, bitmaps_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_trigrams",
    .m_doc = "Trigram bitmaps of message bytes, for storage/tokens.py.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__trigrams(void) {
    return PyModule_Create(&module);
}

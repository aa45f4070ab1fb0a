/* kmsemu._core: the optional compiled core of the KMS host's hot path (KLP/1).
 *
 * Built only on request (scripts/build-core); the pure-Python package is the default
 * and the reference. Three things live here:
 *
 * - AesGcm: AES-256-GCM through the system libcrypto (OpenSSL EVP), the library
 *   Python's own ssl and hashlib modules already load. Same calls as the
 *   `cryptography` AESGCM the pure path uses (encrypt / decrypt raising InvalidTag),
 *   so kmsemu.klp.envelope can hold either; with it the host never imports
 *   `cryptography`, which carries a second OpenSSL (about 7 MiB of idle RSS).
 *
 * - HostCore: one REQUEST stub opened in one call (NDR stub, envelope header, key
 *   lookup, AES-GCM open, plaintext checks, RequestFields built), and one RESPONSE
 *   stub made in one call (plaintext packed, sealed, NDR framed). The rules (catalog,
 *   clock skew, count cache) stay in Python between the two. Whatever is not the
 *   common case (a stub, envelope or plaintext that does not check) makes `open`
 *   return None, and the caller answers through the pure-Python path, which words the
 *   refusal: so the core never has to agree with it on error texts, only on bytes.
 *
 * - activation_line: the event log's line for an answered request, in the plain case
 *   (kmsemu.host.events.EventLog.activation keeps the reference f-string).
 *
 * - journal_add: an answered request's journal record framed into the journal's map
 *   (kmsemu.host.journal.record keeps the reference: the same marshal, the same CRC-32).
 *
 * Nothing here draws randomness or reads a clock: nonces and times come in as
 * arguments, as everywhere in kmsemu's pure code (klp-v1.md sections 2 to 4).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <marshal.h>
#include <openssl/evp.h>
#include <string.h>
#include <time.h>

#define KEY_SIZE 32
#define NONCE_SIZE 12
#define TAG_SIZE 16
#define HEADER_SIZE 24
#define MIN_ENVELOPE (HEADER_SIZE + TAG_SIZE)
#define REQUEST_SIZE 232
#define RESPONSE_SIZE 196
#define NAME_OFFSET 104
#define NAME_SIZE 128
#define RESPONSE_ENVELOPE (HEADER_SIZE + RESPONSE_SIZE + TAG_SIZE)
#define REFERENT_ID 0x00020000u
#define MAX_KEYS 64

static PyObject *InvalidTag;

/* -- little-endian helpers ----------------------------------------------------------- */

static inline uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static inline void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void put_u64(unsigned char *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

/* -- AES-256-GCM on prepared contexts -------------------------------------------------- */

/* One direction's cipher: a context per operation, keyed once (the key schedule is
 * computed at creation, each call only sets the nonce). */
typedef struct {
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
} Gcm;

static int gcm_init(Gcm *gcm, const unsigned char *key)
{
    gcm->enc = EVP_CIPHER_CTX_new();
    gcm->dec = EVP_CIPHER_CTX_new();
    if (gcm->enc == NULL || gcm->dec == NULL ||
        EVP_EncryptInit_ex(gcm->enc, EVP_aes_256_gcm(), NULL, key, NULL) != 1 ||
        EVP_DecryptInit_ex(gcm->dec, EVP_aes_256_gcm(), NULL, key, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto could not set up AES-256-GCM");
        return -1;
    }
    return 0;
}

static void gcm_free(Gcm *gcm)
{
    EVP_CIPHER_CTX_free(gcm->enc);
    EVP_CIPHER_CTX_free(gcm->dec);
    gcm->enc = gcm->dec = NULL;
}

/* ciphertext and tag into out (len + 16 bytes); 0 on success */
static int gcm_seal(Gcm *gcm, const unsigned char *nonce, const unsigned char *aad,
                    int aad_len, const unsigned char *in, int len, unsigned char *out)
{
    int n = 0, m = 0;
    EVP_CIPHER_CTX *ctx = gcm->enc;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
        (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, aad_len) != 1) ||
        EVP_EncryptUpdate(ctx, out, &n, in, len) != 1 ||
        EVP_EncryptFinal_ex(ctx, out + n, &m) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, out + len) != 1)
        return -1;
    return 0;
}

/* plaintext of len - 16 bytes into out; 0 when the tag verifies */
static int gcm_open(Gcm *gcm, const unsigned char *nonce, const unsigned char *aad,
                    int aad_len, const unsigned char *in, int len, unsigned char *out)
{
    int n = 0, m = 0;
    int body = len - TAG_SIZE;
    EVP_CIPHER_CTX *ctx = gcm->dec;
    if (body < 0)
        return -1;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
        (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, aad_len) != 1) ||
        EVP_DecryptUpdate(ctx, out, &n, in, body) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, (void *)(in + body)) != 1 ||
        EVP_DecryptFinal_ex(ctx, out + n, &m) != 1)
        return -1;
    return 0;
}

/* -- AesGcm: the cipher object kmsemu.klp.envelope holds ----------------------------- */

typedef struct {
    PyObject_HEAD
    Gcm gcm;
} AesGcmObject;

static int AesGcm_init(AesGcmObject *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"key", NULL};
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:AesGcm", names, &key))
        return -1;
    if (key.len != KEY_SIZE) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "AesGcm takes a 32-byte key (AES-256)");
        return -1;
    }
    gcm_free(&self->gcm);
    int rc = gcm_init(&self->gcm, key.buf);
    PyBuffer_Release(&key);
    return rc;
}

static void AesGcm_dealloc(AesGcmObject *self)
{
    gcm_free(&self->gcm);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* nonce, data and aad as cryptography's AESGCM takes them (aad may be None) */
static int aead_args(int ready, PyObject *const *args, Py_ssize_t nargs, const char *name,
                     Py_buffer *nonce, Py_buffer *data, Py_buffer *aad)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s takes nonce, data, associated_data", name);
        return -1;
    }
    if (!ready) {
        PyErr_SetString(PyExc_ValueError, "AesGcm was not given a key");
        return -1;
    }
    aad->buf = NULL;
    aad->obj = NULL;
    aad->len = 0;
    if (PyObject_GetBuffer(args[0], nonce, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[1], data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(nonce);
        return -1;
    }
    if (args[2] != Py_None && PyObject_GetBuffer(args[2], aad, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(nonce);
        PyBuffer_Release(data);
        return -1;
    }
    if (nonce->len != NONCE_SIZE || data->len > INT_MAX - TAG_SIZE || aad->len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "nonce must be 12 bytes (and data under 2 GiB)");
        PyBuffer_Release(nonce);
        PyBuffer_Release(data);
        if (aad->obj != NULL)
            PyBuffer_Release(aad);
        return -1;
    }
    return 0;
}

static void aead_release(Py_buffer *nonce, Py_buffer *data, Py_buffer *aad)
{
    PyBuffer_Release(nonce);
    PyBuffer_Release(data);
    if (aad->obj != NULL)
        PyBuffer_Release(aad);
}

static PyObject *AesGcm_encrypt(AesGcmObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad;
    if (aead_args(self->gcm.enc != NULL, args, nargs, "encrypt", &nonce, &data, &aad) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, data.len + TAG_SIZE);
    if (out != NULL &&
        gcm_seal(&self->gcm, nonce.buf, aad.buf, (int)aad.len, data.buf, (int)data.len,
                 (unsigned char *)PyBytes_AS_STRING(out)) != 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to seal");
    }
    aead_release(&nonce, &data, &aad);
    return out;
}

static PyObject *AesGcm_decrypt(AesGcmObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad;
    if (aead_args(self->gcm.dec != NULL, args, nargs, "decrypt", &nonce, &data, &aad) < 0)
        return NULL;
    PyObject *out = NULL;
    if (data.len < TAG_SIZE) {
        PyErr_SetNone(InvalidTag);
    } else {
        out = PyBytes_FromStringAndSize(NULL, data.len - TAG_SIZE);
        if (out != NULL &&
            gcm_open(&self->gcm, nonce.buf, aad.buf, (int)aad.len, data.buf, (int)data.len,
                     (unsigned char *)PyBytes_AS_STRING(out)) != 0) {
            Py_CLEAR(out);
            PyErr_SetNone(InvalidTag);
        }
    }
    aead_release(&nonce, &data, &aad);
    return out;
}

static PyMethodDef AesGcm_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))AesGcm_encrypt, METH_FASTCALL,
     "encrypt(nonce, data, associated_data) -> ciphertext + 16-byte tag"},
    {"decrypt", (PyCFunction)(void (*)(void))AesGcm_decrypt, METH_FASTCALL,
     "decrypt(nonce, data, associated_data) -> plaintext; InvalidTag when it does not verify"},
    {NULL},
};

static PyTypeObject AesGcmType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmsemu._core.AesGcm",
    .tp_basicsize = sizeof(AesGcmObject),
    .tp_dealloc = (destructor)AesGcm_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "AES-256-GCM with one key, through the system libcrypto.",
    .tp_methods = AesGcm_methods,
    .tp_init = (initproc)AesGcm_init,
    .tp_new = PyType_GenericNew,
};

/* -- HostCore: one request in, one response stub out ---------------------------------- */

typedef struct {
    unsigned char key_id[4];
    Gcm request;
    Gcm response;
} CoreKey;

typedef struct {
    PyObject_HEAD
    CoreKey *keys;
    Py_ssize_t count;
    unsigned char host_id[8];
    unsigned char epid[NAME_SIZE];
    PyTypeObject *fields_type; /* kmsemu.klp.messages.RequestFields */
} HostCoreObject;

static void HostCore_clear_keys(HostCoreObject *self)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        gcm_free(&self->keys[i].request);
        gcm_free(&self->keys[i].response);
    }
    PyMem_Free(self->keys);
    self->keys = NULL;
    self->count = 0;
}

static int fixed_bytes(PyObject *obj, Py_ssize_t size, unsigned char *out, const char *what)
{
    if (!PyBytes_Check(obj) || PyBytes_GET_SIZE(obj) != size) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes", what, size);
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(obj), size);
    return 0;
}

/* HostCore(keys, host_id, epid_field, fields_type); keys: (key_id, request key, response
 * key) triples in the keyring's order (the order secrets sharing a key id are tried in) */
static int HostCore_init(HostCoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"keys", "host_id", "epid_field", "fields_type", NULL};
    PyObject *keys, *host_id, *epid, *fields_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OSSO!:HostCore", names, &keys, &host_id,
                                     &epid, &PyType_Type, &fields_type))
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)fields_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "fields_type must be a tuple type");
        return -1;
    }
    PyObject *seq = PySequence_Fast(keys, "keys must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int rc = -1;
    HostCore_clear_keys(self);
    if (n < 1 || n > MAX_KEYS) {
        PyErr_SetString(PyExc_ValueError, "HostCore takes 1 to 64 keys");
        goto done;
    }
    if (fixed_bytes(host_id, 8, self->host_id, "host_id") < 0 ||
        fixed_bytes(epid, NAME_SIZE, self->epid, "epid_field") < 0)
        goto done;
    self->keys = PyMem_Calloc(n, sizeof(CoreKey));
    if (self->keys == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        unsigned char request[KEY_SIZE], response[KEY_SIZE];
        CoreKey *key = &self->keys[i];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "a key is (key_id, request_key, response_key)");
            goto done;
        }
        if (fixed_bytes(PyTuple_GET_ITEM(item, 0), 4, key->key_id, "key_id") < 0 ||
            fixed_bytes(PyTuple_GET_ITEM(item, 1), KEY_SIZE, request, "request_key") < 0 ||
            fixed_bytes(PyTuple_GET_ITEM(item, 2), KEY_SIZE, response, "response_key") < 0)
            goto done;
        self->count = i + 1; /* freed by clear_keys from here on */
        if (gcm_init(&key->request, request) < 0 || gcm_init(&key->response, response) < 0)
            goto done;
    }
    Py_INCREF(fields_type);
    Py_XSETREF(self->fields_type, (PyTypeObject *)fields_type);
    rc = 0;
done:
    if (rc < 0)
        HostCore_clear_keys(self);
    Py_DECREF(seq);
    return rc;
}

static void HostCore_dealloc(HostCoreObject *self)
{
    HostCore_clear_keys(self);
    Py_XDECREF(self->fields_type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The envelope inside a REQUEST stub (klp-v1.md section 2), or NULL when it does not parse */
static const unsigned char *stub_envelope(const unsigned char *stub, Py_ssize_t len,
                                          Py_ssize_t *size)
{
    if (len < 8)
        return NULL;
    uint32_t n = get_u32(stub), max_count = get_u32(stub + 4);
    if (n != max_count || (Py_ssize_t)n > len - 8)
        return NULL;
    Py_ssize_t trailing = len - 8 - (Py_ssize_t)n;
    if (trailing > 3)
        return NULL;
    for (Py_ssize_t i = 0; i < trailing; i++)
        if (stub[8 + n + i])
            return NULL;
    *size = n;
    return stub + 8;
}

/* The workstation name (section 4.1): UTF-16LE up to the first NUL code unit, strict, as
 * kmsemu.wire.decode_utf16_field; NULL (no exception set) when it does not check. */
static PyObject *workstation_name(const unsigned char *field)
{
    Py_ssize_t end = 0;
    while (end < NAME_SIZE && (field[end] || field[end + 1]))
        end += 2;
    if (end >= NAME_SIZE)
        return NULL;
    int byteorder = -1; /* little-endian, no BOM taken */
    PyObject *name = PyUnicode_DecodeUTF16((const char *)field, end, "strict", &byteorder);
    if (name == NULL)
        PyErr_Clear();
    return name;
}

/* RequestFields from a checked plaintext (section 4.1), built as tuple.__new__ would */
static PyObject *request_fields(PyTypeObject *type, const unsigned char *p, PyObject *name)
{
    PyObject *items[11] = {
        PyLong_FromUnsignedLong(get_u32(p)),
        PyLong_FromUnsignedLong(get_u32(p + 4)),
        PyLong_FromUnsignedLong(get_u32(p + 8)),
        PyBytes_FromStringAndSize((const char *)p + 12, 16),
        PyBytes_FromStringAndSize((const char *)p + 28, 16),
        PyBytes_FromStringAndSize((const char *)p + 44, 16),
        PyBytes_FromStringAndSize((const char *)p + 60, 16),
        PyLong_FromUnsignedLong(get_u32(p + 76)),
        PyLong_FromUnsignedLongLong(get_u64(p + 80)),
        PyBytes_FromStringAndSize((const char *)p + 88, 16),
        name,
    };
    PyObject *fields = NULL;
    for (int i = 0; i < 10; i++)
        if (items[i] == NULL)
            goto fail;
    fields = type->tp_alloc(type, 11);
    if (fields == NULL)
        goto fail;
    for (int i = 0; i < 11; i++)
        PyTuple_SET_ITEM(fields, i, items[i]);
    return fields;
fail:
    for (int i = 0; i < 11; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

/* open(stub) -> (RequestFields, request nonce, key index), or None for anything the
 * pure path must judge (it gives the same answer and words the reason) */
static PyObject *HostCore_open(HostCoreObject *self, PyObject *stub_obj)
{
    unsigned char plaintext[REQUEST_SIZE + 4096];
    Py_ssize_t size;
    if (!PyBytes_Check(stub_obj))
        Py_RETURN_NONE;
    const unsigned char *env = stub_envelope((const unsigned char *)PyBytes_AS_STRING(stub_obj),
                                             PyBytes_GET_SIZE(stub_obj), &size);
    if (env == NULL || size < MIN_ENVELOPE + REQUEST_SIZE ||
        size - MIN_ENVELOPE > (Py_ssize_t)sizeof(plaintext) || memcmp(env, "KLP1", 4) != 0 ||
        env[4] != 1 || env[5] != 0)
        Py_RETURN_NONE;
    Py_ssize_t index = 0;
    for (; index < self->count; index++) {
        CoreKey *key = &self->keys[index];
        if (memcmp(key->key_id, env + 8, 4) == 0 &&
            gcm_open(&key->request, env + 12, env, HEADER_SIZE, env + HEADER_SIZE,
                     (int)(size - HEADER_SIZE), plaintext) == 0)
            break;
    }
    if (index == self->count || get_u32(plaintext + 4) > 6)
        Py_RETURN_NONE;
    static const unsigned char nil[16];
    if (memcmp(plaintext + 60, nil, 16) == 0)
        Py_RETURN_NONE;
    PyObject *name = workstation_name(plaintext + NAME_OFFSET);
    if (name == NULL)
        Py_RETURN_NONE;
    PyObject *fields = request_fields(self->fields_type, plaintext, name);
    if (fields == NULL)
        return NULL;
    PyObject *nonce = PyBytes_FromStringAndSize((const char *)env + 12, NONCE_SIZE);
    PyObject *at = PyLong_FromSsize_t(index);
    if (nonce == NULL || at == NULL) {
        Py_DECREF(fields);
        Py_XDECREF(nonce);
        Py_XDECREF(at);
        return NULL;
    }
    PyObject *out = PyTuple_New(3);
    if (out == NULL) {
        Py_DECREF(fields);
        Py_DECREF(nonce);
        Py_DECREF(at);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, fields);
    PyTuple_SET_ITEM(out, 1, nonce);
    PyTuple_SET_ITEM(out, 2, at);
    return out;
}

static int arg_u32(PyObject *obj, uint32_t *out, const char *what)
{
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > 0xFFFFFFFFul) {
        PyErr_Format(PyExc_OverflowError, "%s is outside u32", what);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int arg_u64(PyObject *obj, uint64_t *out, const char *what)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_OverflowError, "%s is outside u64", what);
        return -1;
    }
    *out = v;
    return 0;
}

/* seal(index, status, request_nonce, cmid, request_time, response_time, count,
 *      activation_interval, renewal_interval, nonce) -> RESPONSE stub bytes:
 * kmsemu.klp.messages.pack_response, envelope.seal_response and
 * rpc.ndr.encode_response_stub(sealed, 0) in one */
static PyObject *HostCore_seal(HostCoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t index;
    uint32_t status, count, act, renew;
    uint64_t request_time, response_time;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "seal takes 10 arguments");
        return NULL;
    }
    index = PyLong_AsSsize_t(args[0]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= self->count) {
        PyErr_SetString(PyExc_IndexError, "no such key");
        return NULL;
    }
    if (arg_u32(args[1], &status, "status") < 0 ||
        arg_u64(args[4], &request_time, "request_time") < 0 ||
        arg_u64(args[5], &response_time, "response_time") < 0 ||
        arg_u32(args[6], &count, "current_count") < 0 ||
        arg_u32(args[7], &act, "activation_interval") < 0 ||
        arg_u32(args[8], &renew, "renewal_interval") < 0)
        return NULL;
    PyObject *request_nonce = args[2], *cmid = args[3], *nonce = args[9];
    if (!PyBytes_Check(request_nonce) || PyBytes_GET_SIZE(request_nonce) != NONCE_SIZE ||
        !PyBytes_Check(nonce) || PyBytes_GET_SIZE(nonce) != NONCE_SIZE ||
        !PyBytes_Check(cmid) || PyBytes_GET_SIZE(cmid) != 16) {
        PyErr_SetString(PyExc_ValueError, "nonces must be 12 bytes and the CMID 16");
        return NULL;
    }
    unsigned char plain[RESPONSE_SIZE];
    put_u32(plain, status);
    memcpy(plain + 4, PyBytes_AS_STRING(request_nonce), NONCE_SIZE);
    memcpy(plain + 16, PyBytes_AS_STRING(cmid), 16);
    put_u64(plain + 32, request_time);
    put_u64(plain + 40, response_time);
    put_u32(plain + 48, count);
    put_u32(plain + 52, act);
    put_u32(plain + 56, renew);
    memcpy(plain + 60, self->host_id, 8);
    memcpy(plain + 68, self->epid, NAME_SIZE);

    /* stub: size, referent, max_count, envelope (236 bytes: no padding), status 0 */
    PyObject *out = PyBytes_FromStringAndSize(NULL, 12 + RESPONSE_ENVELOPE + 4);
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char *env = p + 12;
    put_u32(p, RESPONSE_ENVELOPE);
    put_u32(p + 4, REFERENT_ID);
    put_u32(p + 8, RESPONSE_ENVELOPE);
    memcpy(env, "KLP1\x01\x00\x00\x00", 8);
    memcpy(env + 8, self->keys[index].key_id, 4);
    memcpy(env + 12, PyBytes_AS_STRING(nonce), NONCE_SIZE);
    if (gcm_seal(&self->keys[index].response, env + 12, env, HEADER_SIZE, plain, RESPONSE_SIZE,
                 env + HEADER_SIZE) != 0) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to seal");
        return NULL;
    }
    put_u32(env + RESPONSE_ENVELOPE, 0);
    return out;
}

static PyMethodDef HostCore_methods[] = {
    {"open", (PyCFunction)HostCore_open, METH_O,
     "open(stub) -> (RequestFields, request nonce, key index) or None (ask the pure path)"},
    {"seal", (PyCFunction)(void (*)(void))HostCore_seal, METH_FASTCALL,
     "seal(index, status, request_nonce, cmid, request_time, response_time, count, "
     "activation_interval, renewal_interval, nonce) -> RESPONSE stub"},
    {NULL},
};

static PyTypeObject HostCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmsemu._core.HostCore",
    .tp_basicsize = sizeof(HostCoreObject),
    .tp_dealloc = (destructor)HostCore_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A host's keys and identity: REQUEST stubs opened, RESPONSE stubs sealed.",
    .tp_methods = HostCore_methods,
    .tp_init = (initproc)HostCore_init,
    .tp_new = PyType_GenericNew,
};

/* -- the event log's activation line ------------------------------------------------ */

#define EPOCH_SECONDS 11644473600LL /* 1601-01-01 to 1970-01-01 */
#define LINE_MAX_BYTES 1024

static int line_int(PyObject *obj, long long *out)
{
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

static const char *line_text(PyObject *obj, Py_ssize_t *size)
{
    const char *text = PyUnicode_Check(obj) ? PyUnicode_AsUTF8AndSize(obj, size) : NULL;
    if (text == NULL)
        PyErr_Clear();
    return text;
}

static void guid_hex(const unsigned char *le, char *out)
{
    /* str(uuid.UUID(bytes_le=le)): the first three fields little-endian, then as stored */
    static const char digits[] = "0123456789abcdef";
    static const unsigned char order[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = digits[le[order[i]] >> 4];
        *o++ = digits[le[order[i]] & 15];
    }
    *o = '\0';
}

/* The line's pieces, written without printf (parsing its format was most of the line's
 * cost): `n` digits of 0 <= v, zero-padded; a signed 64-bit decimal; `n` bytes of text. */
static char *put_digits(char *o, int v, int n)
{
    for (int i = n - 1; i >= 0; i--, v /= 10)
        o[i] = (char)('0' + v % 10);
    return o + n;
}

static char *put_decimal(char *o, long long v)
{
    char digits[20];
    unsigned long long m = v < 0 ? 0 - (unsigned long long)v : (unsigned long long)v;
    int n = 0;
    do {
        digits[n++] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (v < 0)
        *o++ = '-';
    while (n)
        *o++ = digits[--n];
    return o;
}

static char *put_text(char *o, const char *text, Py_ssize_t n)
{
    memcpy(o, text, (size_t)n);
    return o + n;
}

/* activation_line(time, status, product, activation_id, count, name, cmid, flags,
 *                 license_status, minutes, required, peer) -> str or None:
 * kmsemu.host.events.EventLog.activation's text line for a request without a reason,
 * or None where that line is not the plain case (a name to quote or not ASCII, a time
 * outside 1970-5254, a number past 64 bits, text that is not UTF-8-clean): the caller
 * then formats it in Python, the reference. */
static PyObject *activation_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "activation_line takes 12 arguments");
        return NULL;
    }
    long long filetime, status, count, flags, license_status, minutes, required;
    if (line_int(args[0], &filetime) < 0 || line_int(args[1], &status) < 0 ||
        line_int(args[4], &count) < 0 || line_int(args[7], &flags) < 0 ||
        line_int(args[8], &license_status) < 0 || line_int(args[9], &minutes) < 0 ||
        line_int(args[10], &required) < 0)
        Py_RETURN_NONE;
    /* from 1970 to 2^60 (year 5254): there Python's float seconds are exact too */
    if (status < 0 || status > 0xFFFFFFFFLL || filetime <= 0 || filetime >= (1LL << 60))
        Py_RETURN_NONE;
    long long unix_seconds = filetime / 10000000LL - EPOCH_SECONDS;
    if (unix_seconds < 0)
        Py_RETURN_NONE;
    Py_ssize_t product_n, id_n, name_n, peer_n;
    const char *product = line_text(args[2], &product_n);
    const char *activation_id = line_text(args[3], &id_n);
    const char *name = line_text(args[5], &name_n);
    const char *peer = line_text(args[11], &peer_n);
    PyObject *cmid = args[6];
    if (product == NULL || activation_id == NULL || name == NULL || peer == NULL ||
        !PyBytes_Check(cmid) || PyBytes_GET_SIZE(cmid) != 16 || name_n == 0 ||
        product_n + id_n + name_n + peer_n > LINE_MAX_BYTES - 400)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < name_n; i++) { /* as EventLog: no quotes needed, ASCII */
        unsigned char ch = (unsigned char)name[i];
        if (ch < 0x21 || ch > 0x7E || ch == '"' || ch == '=')
            Py_RETURN_NONE;
    }
    time_t when = (time_t)unix_seconds;
    struct tm utc;
    if (gmtime_r(&when, &utc) == NULL)
        Py_RETURN_NONE;
    char line[LINE_MAX_BYTES]; /* room: 400 bytes past the texts (checked above) */
    char *o = line;
    o = put_digits(o, utc.tm_year + 1900, 4);
    *o++ = '-';
    o = put_digits(o, utc.tm_mon + 1, 2);
    *o++ = '-';
    o = put_digits(o, utc.tm_mday, 2);
    *o++ = 'T';
    o = put_digits(o, utc.tm_hour, 2);
    *o++ = ':';
    o = put_digits(o, utc.tm_min, 2);
    *o++ = ':';
    o = put_digits(o, utc.tm_sec, 2);
    *o++ = '.';
    o = put_digits(o, (int)(filetime % 10000000LL / 10000), 3);
    o = put_text(o, "Z activation status=0x", 22);
    static const char hex[] = "0123456789ABCDEF";
    for (int shift = 28; shift >= 0; shift -= 4)
        *o++ = hex[(status >> shift) & 15];
    o = put_text(o, " product=", 9);
    o = put_text(o, product, product_n);
    o = put_text(o, " activation_id=", 15);
    o = put_text(o, activation_id, id_n);
    o = put_text(o, " count=", 7);
    o = put_decimal(o, count);
    o = put_text(o, " client=", 8);
    o = put_text(o, name, name_n);
    o = put_text(o, " cmid=", 6);
    guid_hex((const unsigned char *)PyBytes_AS_STRING(cmid), o);
    o += 36;
    o = put_text(o, " vm=", 4);
    *o++ = (char)('0' + (flags & 1));
    o = put_text(o, " license_status=", 16);
    o = put_decimal(o, license_status);
    o = put_text(o, " minutes=", 9);
    o = put_decimal(o, minutes);
    o = put_text(o, " required=", 10);
    o = put_decimal(o, required);
    o = put_text(o, " peer=", 6);
    o = put_text(o, peer, peer_n);
    *o++ = '\n';
    return PyUnicode_DecodeUTF8(line, o - line, "strict");
}

/* -- the journal --------------------------------------------------------------------- */

static PyObject *zlib_crc32; /* zlib.crc32: the CRC-32 the pure path uses, and fast */

/* The marshal (version 2) of what a journal record holds, written straight into the map:
 * None, int within 64 bits, bytes, bytearray, ASCII str and tuples of them, as
 * marshal.dumps(v, 2) writes them (TYPE_INT within 32 bits, else TYPE_LONG in 15-bit
 * digits; a bytearray as bytes; no references in version 2). 0 when written; 1 when `v`
 * is something else (the caller lets marshal do it); 2 when the room [p, end) is too
 * small. */
typedef struct {
    unsigned char *p, *end;
} Room;

static int w_bytes(Room *r, unsigned char type, const void *data, Py_ssize_t n)
{
    if (n > (Py_ssize_t)INT32_MAX)
        return 1;
    if (r->end - r->p < 5 + n)
        return 2;
    *r->p = type;
    put_u32(r->p + 1, (uint32_t)n);
    memcpy(r->p + 5, data, (size_t)n);
    r->p += 5 + n;
    return 0;
}

static int w_tuple_head(Room *r, Py_ssize_t n)
{
    if (r->end - r->p < 5)
        return 2;
    *r->p = '(';
    put_u32(r->p + 1, (uint32_t)n);
    r->p += 5;
    return 0;
}

static int w_value(Room *r, PyObject *v, int depth)
{
    if (v == Py_None) {
        if (r->end - r->p < 1)
            return 2;
        *r->p++ = 'N';
        return 0;
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 1;
        }
        if (x >= INT32_MIN && x <= INT32_MAX) {
            if (r->end - r->p < 5)
                return 2;
            *r->p = 'i';
            put_u32(r->p + 1, (uint32_t)(int32_t)x);
            r->p += 5;
            return 0;
        }
        uint64_t m = x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
        unsigned char digits[10];
        int n = 0;
        for (; m; m >>= 15, n++) {
            digits[2 * n] = (unsigned char)(m & 0xFF);
            digits[2 * n + 1] = (unsigned char)((m >> 8) & 0x7F);
        }
        if (r->end - r->p < 5 + 2 * n)
            return 2;
        *r->p = 'l';
        put_u32(r->p + 1, (uint32_t)(x < 0 ? -n : n));
        memcpy(r->p + 5, digits, (size_t)(2 * n));
        r->p += 5 + 2 * n;
        return 0;
    }
    if (PyBytes_CheckExact(v))
        return w_bytes(r, 's', PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    if (PyByteArray_CheckExact(v)) /* marshal writes any other bytes-like as bytes */
        return w_bytes(r, 's', PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v));
    if (PyUnicode_CheckExact(v) && PyUnicode_IS_COMPACT_ASCII(v))
        return w_bytes(r, 'u', PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v));
    if (PyTuple_CheckExact(v) && depth < 2) {
        int w = w_tuple_head(r, PyTuple_GET_SIZE(v));
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v) && w == 0; i++)
            w = w_value(r, PyTuple_GET_ITEM(v, i), depth + 1);
        return w;
    }
    return 1;
}

/* The triple as marshal.dumps writes it, from `start` (over what the direct writer began):
 * 0, 2 (no room) or -1 (an error set). */
static int w_marshal(Room *r, unsigned char *start, PyObject *const *triple)
{
    PyObject *entry = PyTuple_Pack(3, triple[0], triple[1], triple[2]);
    if (entry == NULL)
        return -1;
    PyObject *body = PyMarshal_WriteObjectToString(entry, 2);
    Py_DECREF(entry);
    if (body == NULL)
        return -1;
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    int w = 2;
    if (n <= r->end - start) {
        memcpy(start, PyBytes_AS_STRING(body), (size_t)n);
        if (start + n > r->p)
            r->p = start + n;
        w = 0;
    }
    Py_DECREF(body);
    return w;
}

/* The frame's length and CRC-32 (zlib's, as the pure path) for the body up to `end`:
 * 0, or -1 (an error set). */
static int w_frame(unsigned char *frame, unsigned char *end)
{
    PyObject *body = PyMemoryView_FromMemory((char *)frame + 8, end - (frame + 8), PyBUF_READ);
    if (body == NULL)
        return -1;
    PyObject *crc = PyObject_CallOneArg(zlib_crc32, body);
    Py_DECREF(body);
    if (crc == NULL)
        return -1;
    put_u32(frame, (uint32_t)(end - (frame + 8)));
    put_u32(frame + 4, (uint32_t)PyLong_AsUnsignedLongMask(crc));
    Py_DECREF(crc);
    return 0;
}

/* journal_add(map, at, seq, row, previous) -> int:
 * kmsemu.host.journal.record(seq, row, previous) written into the writable buffer `map`
 * at offset `at` (length, CRC-32, marshal version 2 of the triple), with room for the
 * zeros that end it; the offset after it, or 0 when `map` has no room (then what it had
 * begun to write past `at` is zeroed again, as a journal's map is past its last record,
 * and the caller grows the map the pure way). */
static PyObject *journal_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "journal_add takes 5 arguments");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred())
        return NULL;
    if (at < 0) {
        PyErr_SetString(PyExc_ValueError, "journal_add: a negative offset");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (at > view.len - 16) {
        PyBuffer_Release(&view);
        return PyLong_FromSsize_t(0);
    }
    unsigned char *frame = (unsigned char *)view.buf + at;
    Room room = {frame + 8, (unsigned char *)view.buf + view.len - 8};
    int w = w_tuple_head(&room, 3); /* (seq, row, previous) */
    for (int i = 2; i < 5 && w == 0; i++)
        w = w_value(&room, args[i], 1);
    if (w == 1) /* something the direct writer does not take: marshal's own bytes */
        w = w_marshal(&room, frame + 8, args + 2);
    if (w == 0)
        w = w_frame(frame, room.p);
    Py_ssize_t end = at + 8 + (room.p - (frame + 8));
    if (w != 0) { /* no room, or an error: the bytes past the last record are zeros again */
        memset(frame + 8, 0, (size_t)(room.p - (frame + 8)));
        end = 0;
    }
    PyBuffer_Release(&view);
    return w < 0 ? NULL : PyLong_FromSsize_t(end);
}

static PyMethodDef core_functions[] = {
    {"activation_line", (PyCFunction)(void (*)(void))activation_line, METH_FASTCALL,
     "activation_line(time, status, product, activation_id, count, name, cmid, flags, "
     "license_status, minutes, required, peer) -> the event log's line, or None"},
    {"journal_add", (PyCFunction)(void (*)(void))journal_add, METH_FASTCALL,
     "journal_add(map, at, seq, row, previous) -> the offset after the record, or 0 "
     "when the map has no room for it"},
    {NULL},
};

/* -- the module ---------------------------------------------------------------------- */

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kmsemu._core",
    .m_doc = "The optional compiled core of the KMS host (scripts/build-core).",
    .m_size = -1,
    .m_methods = core_functions,
};

PyMODINIT_FUNC PyInit__core(void)
{
    if (PyType_Ready(&AesGcmType) < 0 || PyType_Ready(&HostCoreType) < 0)
        return NULL;
    PyObject *zlib = PyImport_ImportModule("zlib");
    if (zlib == NULL)
        return NULL;
    zlib_crc32 = PyObject_GetAttrString(zlib, "crc32");
    Py_DECREF(zlib);
    if (zlib_crc32 == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL)
        return NULL;
    InvalidTag = PyErr_NewExceptionWithDoc(
        "kmsemu._core.InvalidTag", "The tag does not verify under this key.", NULL, NULL);
    if (InvalidTag == NULL || PyModule_AddObjectRef(m, "InvalidTag", InvalidTag) < 0 ||
        PyModule_AddObjectRef(m, "AesGcm", (PyObject *)&AesGcmType) < 0 ||
        PyModule_AddObjectRef(m, "HostCore", (PyObject *)&HostCoreType) < 0 ||
        PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

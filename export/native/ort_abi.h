// The slice of onnxruntime's C ABI that export/native/ort_ops.cc uses, declared here so the
// library builds without onnxruntime's headers (the Python wheel ships none).
//
// onnxruntime's C API is a versioned, append-only table of function pointers (OrtApi) returned
// by OrtApiBase::GetApi(version); a custom-op library exports
//     OrtStatus* RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*)
// and describes each op with an OrtCustomOp record of callbacks. The positions below are those
// of onnxruntime's public C API (include/onnxruntime/core/session/onnxruntime_c_api.h); being
// append-only, they hold for every runtime since the version we request (17, for ParallelFor).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ort {

// Opaque runtime objects.
struct Status;
struct SessionOptions;
struct KernelContext;
struct KernelInfo;
struct Value;
struct TypeAndShape;
struct CustomOpDomain;
struct Api;  // the function table, read through table_entry()

constexpr uint32_t kApiVersion = 17;  // KernelContext_ParallelFor appeared in 1.17

enum ElementType : int { kFloat = 1, kUint8 = 2, kInt8 = 3, kInt32 = 6, kInt64 = 7,
                         kDouble = 11 };
enum ErrorCode : int { kOk = 0, kFail = 1, kInvalidArgument = 2 };
enum Characteristic : int { kRequired = 0 };
enum MemType : int { kMemDefault = 0 };

struct ApiBase {
  const Api* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// Positions in the OrtApi table and the signatures of the entries used.
enum Entry : size_t {
  kCreateStatus = 0,
  kCreateCustomOpDomain = 26,
  kCustomOpDomainAdd = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetTensorElementType = 60,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorShapeElementCount = 64,
  kGetTensorTypeAndShape = 65,
  kKernelInfoGetAttributeFloat = 85,
  kKernelInfoGetAttributeInt64 = 86,
  kKernelInfoGetAttributeString = 87,
  kKernelContextGetInputCount = 88,
  kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91,
  kReleaseStatus = 93,
  kReleaseTypeAndShape = 99,
  kKernelInfoGetConstantInputTensor = 249,
  kKernelContextParallelFor = 274,
};

using CreateStatusFn = Status* (*)(ErrorCode, const char*);
using CreateCustomOpDomainFn = Status* (*)(const char*, CustomOpDomain**);
struct CustomOp;
using CustomOpDomainAddFn = Status* (*)(CustomOpDomain*, const CustomOp*);
using AddCustomOpDomainFn = Status* (*)(SessionOptions*, CustomOpDomain*);
using GetTensorMutableDataFn = Status* (*)(Value*, void**);
using GetTensorElementTypeFn = Status* (*)(const TypeAndShape*, ElementType*);
using GetDimensionsCountFn = Status* (*)(const TypeAndShape*, size_t*);
using GetDimensionsFn = Status* (*)(const TypeAndShape*, int64_t*, size_t);
using GetTensorShapeElementCountFn = Status* (*)(const TypeAndShape*, size_t*);
using GetTensorTypeAndShapeFn = Status* (*)(const Value*, TypeAndShape**);
using KernelContextGetInputCountFn = Status* (*)(const KernelContext*, size_t*);
using KernelContextGetInputFn = Status* (*)(const KernelContext*, size_t, const Value**);
using KernelContextGetOutputFn = Status* (*)(KernelContext*, size_t, const int64_t*, size_t,
                                             Value**);
using KernelInfoGetAttributeFloatFn = Status* (*)(const KernelInfo*, const char*, float*);
using KernelInfoGetAttributeInt64Fn = Status* (*)(const KernelInfo*, const char*, int64_t*);
using KernelInfoGetAttributeStringFn = Status* (*)(const KernelInfo*, const char*, char*,
                                                   size_t*);  // out == nullptr: size only
using KernelInfoGetConstantInputTensorFn = Status* (*)(const KernelInfo*, size_t, int*,
                                                       const Value**);
using ReleaseStatusFn = void (*)(Status*);
using ReleaseTypeAndShapeFn = void (*)(TypeAndShape*);
using ParallelForFn = Status* (*)(const KernelContext*, void (*)(void*, size_t), size_t, size_t,
                                  void*);

// The function stored at `entry` of the table.
template <typename Fn>
inline Fn table_entry(const Api* api, Entry entry) {
  return reinterpret_cast<Fn const*>(api)[entry];
}

// OrtCustomOp: `version` says which fields the runtime may read; 16 covers every field below
// (CreateKernelV2 / KernelComputeV2, which return a status, appeared in 1.16). The record is
// followed by fields of later versions, which a version-16 op leaves unset.
struct CustomOp {
  uint32_t version;
  void* (*CreateKernel)(const CustomOp*, const Api*, const KernelInfo*);
  const char* (*GetName)(const CustomOp*);
  const char* (*GetExecutionProviderType)(const CustomOp*);
  ElementType (*GetInputType)(const CustomOp*, size_t);
  size_t (*GetInputTypeCount)(const CustomOp*);
  ElementType (*GetOutputType)(const CustomOp*, size_t);
  size_t (*GetOutputTypeCount)(const CustomOp*);
  void (*KernelCompute)(void*, KernelContext*);
  void (*KernelDestroy)(void*);
  Characteristic (*GetInputCharacteristic)(const CustomOp*, size_t);
  Characteristic (*GetOutputCharacteristic)(const CustomOp*, size_t);
  MemType (*GetInputMemoryType)(const CustomOp*, size_t);
  int (*GetVariadicInputMinArity)(const CustomOp*);
  int (*GetVariadicInputHomogeneity)(const CustomOp*);
  int (*GetVariadicOutputMinArity)(const CustomOp*);
  int (*GetVariadicOutputHomogeneity)(const CustomOp*);
  Status* (*CreateKernelV2)(const CustomOp*, const Api*, const KernelInfo*, void**);
  Status* (*KernelComputeV2)(void*, KernelContext*);
  void* later_fields[8];  // InferOutputShapeFn ... ReleaseAliasMap (versions 17+), unset
};

constexpr uint32_t kCustomOpVersion = 16;

}  // namespace ort

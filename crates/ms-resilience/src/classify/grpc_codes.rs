//! The gRPC status codes, listed once: their canonical names (what `error.type` carries in
//! OpenTelemetry's conventions) and the sets the classifiers start from.

use tower_http::classify::GrpcCode;

/// Every status code with its canonical name, in numeric order.
pub(crate) const GRPC_CODES: [(GrpcCode, &str); 17] = [
    (GrpcCode::Ok, "OK"),
    (GrpcCode::Cancelled, "CANCELLED"),
    (GrpcCode::Unknown, "UNKNOWN"),
    (GrpcCode::InvalidArgument, "INVALID_ARGUMENT"),
    (GrpcCode::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (GrpcCode::NotFound, "NOT_FOUND"),
    (GrpcCode::AlreadyExists, "ALREADY_EXISTS"),
    (GrpcCode::PermissionDenied, "PERMISSION_DENIED"),
    (GrpcCode::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (GrpcCode::FailedPrecondition, "FAILED_PRECONDITION"),
    (GrpcCode::Aborted, "ABORTED"),
    (GrpcCode::OutOfRange, "OUT_OF_RANGE"),
    (GrpcCode::Unimplemented, "UNIMPLEMENTED"),
    (GrpcCode::Internal, "INTERNAL"),
    (GrpcCode::Unavailable, "UNAVAILABLE"),
    (GrpcCode::DataLoss, "DATA_LOSS"),
    (GrpcCode::Unauthenticated, "UNAUTHENTICATED"),
];

/// The codes that point at the server rather than at the request, which OpenTelemetry's
/// conventions count as a server span's errors: `UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`.
pub(crate) const SERVER_FAULT_CODES: [GrpcCode; 6] = [
    GrpcCode::Unknown,
    GrpcCode::DeadlineExceeded,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
];

/// The canonical name of a numeric gRPC status code (`14` → `"UNAVAILABLE"`), or `None` for a
/// number outside `0..=16`.
///
/// ```
/// use ms_resilience::classify::grpc_code_name;
///
/// assert_eq!(grpc_code_name(14), Some("UNAVAILABLE"));
/// assert_eq!(grpc_code_name(0), Some("OK"));
/// assert_eq!(grpc_code_name(42), None);
/// ```
pub fn grpc_code_name(code: i32) -> Option<&'static str> {
    usize::try_from(code)
        .ok()
        .and_then(|index| GRPC_CODES.get(index))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_numeric_order() {
        for (number, (code, _)) in GRPC_CODES.iter().enumerate() {
            assert_eq!(GrpcCode::from(i32::try_from(number).unwrap()), *code);
        }
    }
}

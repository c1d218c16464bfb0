#include "common/error.h"

#include <exception>

namespace rlhf {

void rethrow_with_context(const std::string& context) {
  try {
    throw;
  } catch (const UsageError& e) {
    throw UsageError(context + ": " + e.what());
  } catch (const Error& e) {
    throw Error(context + ": " + e.what(), e.exit_code());
  } catch (const std::exception& e) {
    throw Error(context + ": " + e.what());
  }
}

}  // namespace rlhf

// Placeholder so the module library has a translation unit; remove once real sources exist.

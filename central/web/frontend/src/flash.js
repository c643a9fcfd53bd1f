// A short message about what an action did, in the API's words when it refused (class "flash").
import { ElMessage } from "element-plus";

export function flash(text, ok = true) {
  ElMessage({ message: text, type: ok ? "success" : "error", customClass: "flash " + (ok ? "ok" : "error"), duration: 6000,
    showClose: true });
}

// Built into ../dist, served by the hub at /console/ (central/web/routes.py). Everything is bundled: the
// hub may run with no internet, and its CSP allows only same-origin scripts (no inline script, no eval).
import { fileURLToPath } from "node:url";
import vue from "@vitejs/plugin-vue";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/console/",
  plugins: [vue()],
  build: {
    outDir: fileURLToPath(new URL("../dist", import.meta.url)),
    emptyOutDir: true,
    chunkSizeWarningLimit: 2000,
    // no modulepreload polyfill: it is an inline script, which the CSP refuses
    modulePreload: { polyfill: false },
    // the big libraries in chunks of their own: a console change leaves them cached in the browser
    rollupOptions: {
      output: {
        manualChunks: (id) => {
          for (const lib of ["element-plus", "echarts", "zrender", "leaflet"]) {
            if (id.includes(`/node_modules/${lib}/`)) return lib === "zrender" ? "echarts" : lib;
          }
          return id.includes("/node_modules/") ? "vendor" : undefined;
        },
      },
    },
  },
});

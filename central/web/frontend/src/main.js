import { createApp } from "vue";
import ElementPlus from "element-plus";
import "element-plus/dist/index.css";
import "leaflet/dist/leaflet.css";
import "./style.css";
import App from "./App.vue";
import { router } from "./router.js";
import { loadZone } from "./time.js";

loadZone().finally(() => createApp(App).use(router).use(ElementPlus).mount("#app"));

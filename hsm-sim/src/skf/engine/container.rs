//! Containers and their certificates (GM/T 0016-2012, 7.5).

use super::*;

impl SkfEngine {
    /// `SKF_CreateContainer` (user PIN verified); returns the opened container.
    pub fn create_container(&self, h: usize, name: &[u8]) -> Result<usize, Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_CreateContainer")?;
        self.require_user(&a)?;
        self.write_delay(&a.dev, 64)?;
        let name = self.commit(&a.dev, |dev, l| {
            dev.create_container(&a.name, name, l.capacity)
        })?;
        self.add(Handle::Con { app: h, name })
    }

    /// `SKF_DeleteContainer` (user PIN verified): keys and certificates go.
    pub fn delete_container(&self, h: usize, name: &[u8]) -> Result<(), Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_DeleteContainer")?;
        self.require_user(&a)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_FILE_NOT_EXIST)?;
        self.delay(&a.dev, Op::Destroy, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| dev.delete_container(&a.name, &name))?;
        let mut st = self.lock()?;
        st.handles
            .retain(|_, x| !matches!(x, Handle::Con { app, name: n } if *app == h && *n == name));
        Ok(())
    }

    /// `SKF_OpenContainer`.
    pub fn open_container(&self, h: usize, name: &[u8]) -> Result<usize, Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_OpenContainer")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_FILE_NOT_EXIST)?;
        self.read(&a.dev, |dev, _| dev.container(&a.name, &name).map(|_| ()))?;
        self.add(Handle::Con { app: h, name })
    }

    /// `SKF_CloseContainer`.
    pub fn close_container(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        if !matches!(st.handles.get(&h), Some(Handle::Con { .. })) {
            return Err(SAR_INVALIDHANDLEERR);
        }
        st.handles.remove(&h);
        Ok(())
    }

    /// `SKF_EnumContainer`.
    pub fn enum_containers(&self, h: usize) -> Result<Vec<String>, Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_EnumContainer")?;
        self.read(&a.dev, |dev, _| {
            Ok(dev.app(&a.name)?.containers().keys().cloned().collect())
        })
    }

    /// `SKF_GetContainerType`: `CONTAINER_EMPTY` or `CONTAINER_ECC`.
    pub fn container_type(&self, h: usize) -> Result<u32, Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_GetContainerType")?;
        self.read(&c.app.dev, |dev, _| {
            Ok(dev.container(&c.app.name, &c.name)?.kind())
        })
    }

    /// `SKF_ImportCertificate` (user PIN verified).
    pub fn import_cert(&self, h: usize, sign: bool, der: &[u8]) -> Result<(), Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ImportCertificate")?;
        self.require_user(&c.app)?;
        self.write_delay(&c.app.dev, der.len())?;
        self.commit(&c.app.dev, |dev, l| {
            dev.set_cert(&c.app.name, &c.name, sign, der, l.capacity)
        })
    }

    /// `SKF_ExportCertificate` (no PIN needed): `SAR_CERTNOTFOUNTERR` when there is none.
    pub fn export_cert(&self, h: usize, sign: bool) -> Result<Vec<u8>, Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ExportCertificate")?;
        self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .cert(sign)
                .ok_or(SAR_CERTNOTFOUNTERR)
        })
    }
}
